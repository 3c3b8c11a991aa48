from .clip_vision_encoder import CLIPVisionEncoder, interpolate_position_embedding
from .sam_image_encoder import SAMImageEncoder

__all__ = ['CLIPVisionEncoder', 'SAMImageEncoder', 'interpolate_position_embedding']
