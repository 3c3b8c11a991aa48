"""Drawing PixelLM predictions: numbered targets, coloured masks, legends, and the visualizer."""
from .overlay import (blend_masks, mask_colors, number_targets, render_mask_overlay,
                      render_prediction)
from .visualizer import PixelLMVisualizer, require_metainfo, side_by_side

__all__ = ['PixelLMVisualizer', 'blend_masks', 'mask_colors', 'number_targets',
           'render_mask_overlay', 'render_prediction', 'require_metainfo', 'side_by_side']
