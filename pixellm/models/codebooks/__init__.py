"""The segmentation codebook (``SegCodebook``); its token strings live in ``pixellm.text``."""
from .seg_codebook import SegCodebook

__all__ = ['SegCodebook']
