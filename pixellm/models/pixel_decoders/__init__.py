from .base_pixel_decoder import BasePixelDecoder
from .layers import LayerNorm2d, PositionEmbeddingRandom, TwoWayTransformer
from .lisa_mask_decoder import LISAMaskDecoder
from .pixel_decoder import PixelDecoder

__all__ = ['BasePixelDecoder', 'PixelDecoder', 'LISAMaskDecoder', 'TwoWayTransformer',
           'PositionEmbeddingRandom', 'LayerNorm2d']
