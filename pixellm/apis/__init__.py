"""High-level use of a trained PixelLM: load it and ask it about an image."""
from .inference import (InferenceInputError, InferenceResult, build_conversation, inference,
                        init_model, load_image)

__all__ = ['InferenceInputError', 'InferenceResult', 'build_conversation', 'inference',
           'init_model', 'load_image']
