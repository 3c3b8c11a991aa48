"""Synthetic datasets in the formats of real ones, for demos and tests without downloads."""
from .muse_scenes import generate_muse_scenes

__all__ = ['generate_muse_scenes']
