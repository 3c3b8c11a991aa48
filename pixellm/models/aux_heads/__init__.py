"""Auxiliary heads: modules with their own weights that add training losses (none in the paper)."""
from .base_aux_head import BaseAuxHead

__all__ = ['BaseAuxHead']
