"""Data transforms of PixelLM pipelines; importing this package registers them in TRANSFORMS."""
from .conversation import (BuildMuseConversation, ExpandSegTokens, SampleQuestion,
                           TokenizeConversation)
from .formatting import PackPixelLMInputs
from .geometric import ResizeLongestSide
from .loading import DecodeTargetMasks, LoadImageFromFile

__all__ = [
    'LoadImageFromFile', 'DecodeTargetMasks', 'SampleQuestion', 'BuildMuseConversation',
    'ExpandSegTokens', 'TokenizeConversation', 'ResizeLongestSide', 'PackPixelLMInputs'
]
