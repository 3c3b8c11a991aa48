from .base_pixel_decoder import BasePixelDecoder
from .layers import LayerNorm2d, PositionEmbeddingRandom, TwoWayTransformer
from .pixel_decoder import PixelDecoder

__all__ = ['BasePixelDecoder', 'PixelDecoder', 'TwoWayTransformer', 'PositionEmbeddingRandom',
           'LayerNorm2d']
