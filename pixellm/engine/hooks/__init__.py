"""Hooks of pixellm: crash-safe checkpoints, exact resume, per-step gradient digests (to compare
runs) and prediction drawings (validation and test)."""
from .atomic_checkpoint_hook import AtomicCheckpointHook
from .grad_digest_hook import GradDigestHook, numerics_context, tensor_digest
from .rng_state_hook import RNGStateHook, capture_rng_state, restore_rng_state
from .visualization_hook import PixelLMVisualizationHook, codebook_tokens_of

__all__ = [
    'AtomicCheckpointHook', 'GradDigestHook', 'PixelLMVisualizationHook', 'RNGStateHook',
    'capture_rng_state', 'codebook_tokens_of', 'numerics_context',
    'restore_rng_state', 'tensor_digest'
]
