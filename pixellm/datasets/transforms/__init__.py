"""Data transforms of PixelLM pipelines; importing this package registers them in TRANSFORMS."""
from .conversation import (BuildMuseConversation, ExpandSegTokens, SampleQuestion,
                           TokenizeConversation)
from .formatting import PackPixelLMInputs
from .geometric import ResizeLongestSide
from .loading import DecodeTargetMasks, LoadImageFromFile
from .refer_conversation import (BuildReferConversation, ChooseExplanatoryAnswer,
                                 SampleReferPhrases)
from .sem_seg_sampling import SampleSemSegTargets
from .vqa_conversation import BuildVQAConversation

__all__ = [
    'LoadImageFromFile', 'DecodeTargetMasks', 'SampleQuestion',
    'SampleReferPhrases',
    'SampleSemSegTargets', 'ChooseExplanatoryAnswer', 'BuildMuseConversation',
    'BuildReferConversation', 'BuildVQAConversation', 'ExpandSegTokens', 'TokenizeConversation',
    'ResizeLongestSide', 'PackPixelLMInputs'
]
