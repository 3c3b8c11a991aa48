from .base_vision_encoder import BaseVisionEncoder
from .clip_vision_encoder import CLIPVisionEncoder, interpolate_position_embedding
from .sam_image_encoder import SAMImageEncoder
from .timm_vision_encoder import TimmVisionEncoder, create_timm_model
from .utils import valid_patch_grid

__all__ = ['BaseVisionEncoder', 'CLIPVisionEncoder', 'SAMImageEncoder', 'TimmVisionEncoder',
           'create_timm_model', 'interpolate_position_embedding', 'valid_patch_grid']
