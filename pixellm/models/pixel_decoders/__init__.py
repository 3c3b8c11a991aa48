from .layers import LayerNorm2d, PositionEmbeddingRandom, TwoWayTransformer
from .pixel_decoder import PixelDecoder

__all__ = ['PixelDecoder', 'TwoWayTransformer', 'PositionEmbeddingRandom', 'LayerNorm2d']
