"""Rendering of PixelLM predictions (numbered targets, coloured masks, legends)."""
from .overlay import (blend_masks, mask_colors, number_targets, render_mask_overlay,
                      render_prediction)

__all__ = ['blend_masks', 'mask_colors', 'number_targets', 'render_mask_overlay',
           'render_prediction']
