"""Hooks of pixellm: crash-safe checkpoints, exact resume, per-step gradient digests (to compare
runs), prediction drawings (validation and test) and the export of a trained vision tower."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .grad_digest_hook import GradDigestHook, numerics_context, tensor_digest
from .rng_state_hook import RNGStateHook, capture_rng_state, restore_rng_state
from .save_vision_encoder_hook import SaveVisionEncoderHook
from .visualization_hook import PixelLMVisualizationHook, codebook_tokens_of

__all__ = [
    'AtomicCheckpointHook', 'GradDigestHook', 'PixelLMVisualizationHook', 'RNGStateHook',
    'SaveVisionEncoderHook', 'capture_rng_state', 'codebook_tokens_of', 'numerics_context',
    'restore_rng_state', 'tensor_digest'
]
