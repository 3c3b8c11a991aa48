"""Hooks of pixellm: crash-safe checkpoints, exact resume, per-step gradient digests (to compare
runs), prediction overlays (test and validation) and the export of a trained vision tower."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .grad_digest_hook import GradDigestHook, numerics_context, tensor_digest
from .mask_overlay_hook import MaskOverlayHook, mask_colors, render_mask_overlay
from .rng_state_hook import RNGStateHook, capture_rng_state, restore_rng_state
from .save_vision_encoder_hook import SaveVisionEncoderHook
from .visualization_hook import PixelLMVisualizationHook

__all__ = [
    'AtomicCheckpointHook', 'GradDigestHook', 'MaskOverlayHook', 'PixelLMVisualizationHook',
    'RNGStateHook', 'SaveVisionEncoderHook', 'capture_rng_state', 'mask_colors',
    'numerics_context', 'render_mask_overlay', 'restore_rng_state', 'tensor_digest'
]
