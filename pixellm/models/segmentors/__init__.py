from .pixellm import PixelLM

__all__ = ['PixelLM']
