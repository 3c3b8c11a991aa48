from .encoder_pretrainer import VisionEncoderPretrainer
from .pixellm import PixelLM

__all__ = ['PixelLM', 'VisionEncoderPretrainer']
