"""Datasets, transforms and chat templates; importing this package registers them."""
from . import chat_templates
from .muse_dataset import DatasetFormatError, MUSEDataset
from .synthetic import generate_muse_scenes
from .transforms import (BuildMuseConversation, DecodeTargetMasks, ExpandSegTokens,
                         LoadImageFromFile, PackPixelLMInputs, ResizeLongestSide, SampleQuestion,
                         TokenizeConversation)

__all__ = [
    'chat_templates', 'DatasetFormatError', 'MUSEDataset', 'generate_muse_scenes',
    'LoadImageFromFile', 'DecodeTargetMasks', 'SampleQuestion', 'BuildMuseConversation',
    'ExpandSegTokens', 'TokenizeConversation', 'ResizeLongestSide', 'PackPixelLMInputs'
]
