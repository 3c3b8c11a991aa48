"""Datasets and transforms; importing this package registers them."""
from .grefcoco_dataset import GRefCOCODataset
from .mix_dataset import SampleRateMixDataset
from .dataset_utils import UnsafePickleError, load_data_pickle
from .muse_dataset import DatasetFormatError, InvalidTargetError, MUSEDataset
from .reason_seg_dataset import ReasonSegDataset
from .refer_dataset import ReferSegDataset
from .sem_seg_dataset import (ADE20KSemSegDataset, COCOStuffSemSegDataset,
                              MapillarySemSegDataset, PACOLVISSemSegDataset,
                              PascalPartSemSegDataset, SemSegQADataset)
from .transforms import (BuildMuseConversation, BuildReferConversation, BuildVQAConversation,
                         ChooseExplanatoryAnswer, DecodeTargetMasks, ExpandSegTokens,
                         LoadImageFromFile, PackPixelLMInputs, ResizeLongestSide, SampleQuestion,
                         SampleReferPhrases, SampleSemSegTargets, TokenizeConversation)
from .vqa_dataset import LLaVAInstructDataset

__all__ = [
    'DatasetFormatError', 'InvalidTargetError', 'UnsafePickleError',
    'load_data_pickle',
    # datasets
    'MUSEDataset', 'ReferSegDataset', 'GRefCOCODataset', 'ReasonSegDataset', 'SemSegQADataset',
    'ADE20KSemSegDataset', 'COCOStuffSemSegDataset', 'MapillarySemSegDataset',
    'PACOLVISSemSegDataset', 'PascalPartSemSegDataset', 'LLaVAInstructDataset',
    'SampleRateMixDataset',
    # transforms
    'LoadImageFromFile', 'DecodeTargetMasks', 'SampleQuestion', 'SampleReferPhrases',
    'SampleSemSegTargets', 'ChooseExplanatoryAnswer', 'BuildMuseConversation',
    'BuildReferConversation', 'BuildVQAConversation', 'ExpandSegTokens', 'TokenizeConversation',
    'ResizeLongestSide', 'PackPixelLMInputs'
]
