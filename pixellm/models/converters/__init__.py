"""Weight converters: read Hugging Face checkpoints, map the official PixelLM and LISA layouts onto ours."""
from .hf_checkpoint import checkpoint_files, load_hf_state_dict, read_hf_config
from .key_mapping import (ConversionResult, canonical_key, convert_state_dict,
                          convert_with_separate_clip, first_match)
from .official_lisa import (LISA_DROPPED, LISA_KEY_MAP, SAM_KEY_MAP, convert_official_lisa,
                            map_lisa_key, map_sam_key)
from .official_pixellm import (OFFICIAL_DROPPED, OFFICIAL_KEY_MAP, clip_vision_weights,
                               convert_official_pixellm, dropped_reason, load_clip_vision_weights,
                               map_official_key, official_fusion_weights)

__all__ = [
    'checkpoint_files', 'load_hf_state_dict', 'read_hf_config', 'ConversionResult',
    'canonical_key', 'convert_state_dict', 'convert_with_separate_clip', 'first_match',
    'LISA_DROPPED', 'LISA_KEY_MAP', 'SAM_KEY_MAP', 'convert_official_lisa', 'map_lisa_key',
    'map_sam_key', 'OFFICIAL_DROPPED', 'OFFICIAL_KEY_MAP', 'clip_vision_weights',
    'convert_official_pixellm', 'dropped_reason', 'load_clip_vision_weights', 'map_official_key',
    'official_fusion_weights'
]
