from .clip_vision_encoder import CLIPVisionEncoder, interpolate_position_embedding

__all__ = ['CLIPVisionEncoder', 'interpolate_position_embedding']
