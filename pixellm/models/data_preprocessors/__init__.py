from .pixellm_data_preprocessor import CLIP_MEAN, CLIP_STD, PixelLMDataPreprocessor

__all__ = ['PixelLMDataPreprocessor', 'CLIP_MEAN', 'CLIP_STD']
