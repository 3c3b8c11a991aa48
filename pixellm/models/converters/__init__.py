"""Weight converters: read Hugging Face checkpoints, map the official PixelLM layout onto ours."""
from .hf_checkpoint import checkpoint_files, load_hf_state_dict, read_hf_config
from .official_pixellm import (OFFICIAL_DROPPED, OFFICIAL_KEY_MAP, ConversionResult,
                               canonical_key, clip_vision_weights, convert_official_pixellm,
                               dropped_reason, load_clip_vision_weights, map_official_key,
                               official_fusion_weights)

__all__ = [
    'checkpoint_files', 'load_hf_state_dict', 'read_hf_config', 'OFFICIAL_DROPPED',
    'OFFICIAL_KEY_MAP', 'ConversionResult', 'canonical_key', 'clip_vision_weights',
    'convert_official_pixellm', 'dropped_reason', 'load_clip_vision_weights', 'map_official_key',
    'official_fusion_weights'
]
