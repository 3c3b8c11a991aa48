from .mlp_projector import MLPProjector

__all__ = ['MLPProjector']
