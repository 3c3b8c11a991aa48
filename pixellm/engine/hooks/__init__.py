"""Hooks of pixellm: crash-safe checkpoints, exact resume and prediction overlays
(test and validation), and the export of a trained vision tower."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .mask_overlay_hook import MaskOverlayHook, mask_colors, render_mask_overlay
from .rng_state_hook import RNGStateHook, capture_rng_state, restore_rng_state
from .save_vision_encoder_hook import SaveVisionEncoderHook
from .visualization_hook import PixelLMVisualizationHook

__all__ = [
    'AtomicCheckpointHook', 'MaskOverlayHook', 'PixelLMVisualizationHook', 'RNGStateHook',
    'SaveVisionEncoderHook', 'capture_rng_state', 'mask_colors', 'render_mask_overlay',
    'restore_rng_state'
]
