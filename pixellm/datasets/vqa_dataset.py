"""LLaVA-Instruct-150k, the visual instruction data PixelLM keeps training on (its ``vqa`` data).

A json list of ``{id, image, conversations: [{from: 'human'|'gpt', value}, ...]}`` records with
COCO train2017 images. Records are checked when the file is loaded; the conversation is written by
``BuildVQAConversation`` and has no segmentation target. A training pipeline::

    LoadImageFromFile -> BuildVQAConversation -> DecodeTargetMasks (gives (0, H, W) masks)
    -> ExpandSegTokens -> TokenizeConversation -> ResizeLongestSide -> PackPixelLMInputs
"""
import os.path as osp
from typing import Any, Callable, List, Optional, Sequence, Union

from mmengine.dataset import BaseDataset
from mmengine.fileio import isdir

from pixellm.datasets.dataset_utils import (build_pipeline, missing_file_error, parse_json,
                                            read_bytes)
from pixellm.datasets.muse_dataset import DatasetFormatError, describe_record
from pixellm.registry import DATASETS
from pixellm.utils.constants import DEFAULT_IMAGE_TOKEN

_ROLES = ('human', 'gpt')


@DATASETS.register_module()
class LLaVAInstructDataset(BaseDataset):
    """LLaVA-Instruct (``llava_instruct_150k.json``) in mmengine's dataset protocol.

    One item per record, the whole multi-turn conversation in one sample, no mask. Layout under
    ``data_root`` (the official README tree): ``llava_dataset/llava_instruct_150k.json`` and the
    images, named by each record's ``image``, under ``coco/train2017/``.

    Every record is checked at load time, and the first bad one raises
    :class:`DatasetFormatError` naming the file, the record (index and ``id``) and the field:
    ``image`` a non-empty string; ``conversations`` a non-empty list of ``{from, value}`` turns,
    ``from`` being ``'human'`` or ``'gpt'``; after a leading ``'gpt'`` turn is dropped (as the
    official loader drops it) the turns alternate from ``'human'`` and end with a ``'gpt'`` answer;
    at most one ``<image>`` token in the record (there is one image).

    Each data info holds ``img_path``, ``img_id`` (the record's ``id``), ``record_index``,
    ``ann_file`` and ``conversations`` (the checked turns, as in the file).

    Args:
        ann_file (str): The json, relative to ``data_root`` unless absolute. Defaults to
            ``'llava_dataset/llava_instruct_150k.json'``.
        data_root (str): The dataset root. Defaults to ``''``.
        data_prefix (dict, optional): ``img_path``, the image folder. Defaults to
            ``dict(img_path='coco/train2017')``.
        pipeline (Sequence[dict | Callable]): Transforms. Defaults to ``()``.
        test_mode (bool): Passed to :class:`mmengine.dataset.BaseDataset`. Defaults to False.
        lazy_init (bool): Defer reading ``ann_file`` until first use. Defaults to False.
        serialize_data (bool): Keep the data list as one pickled buffer. Defaults to True.
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments.
    """

    METAINFO: dict = dict(dataset_name='LLaVA-Instruct')

    def __init__(self,
                 ann_file: str = 'llava_dataset/llava_instruct_150k.json',
                 data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 **kwargs) -> None:
        prefix = dict(img_path='coco/train2017')
        prefix.update(data_prefix or {})
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=prefix,
                         pipeline=build_pipeline(pipeline), test_mode=test_mode,
                         lazy_init=lazy_init, serialize_data=serialize_data, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Read and check the json.

        Returns:
            list[dict]: One data info per record (see the class docstring).

        Raises:
            FileNotFoundError: The json or the image folder does not exist.
            DatasetFormatError: On the first malformed record.
        """
        name = type(self).__name__
        if not isdir(self.data_prefix['img_path']):
            raise missing_file_error(name, 'image folder', self.data_prefix['img_path'],
                                     'coco/train2017', self.data_root)
        records = parse_json(read_bytes(self.ann_file, name, 'annotation file',
                                        'llava_dataset/llava_instruct_150k.json',
                                        self.data_root), self.ann_file)
        if not isinstance(records, list) or not records:
            raise DatasetFormatError(self.ann_file, '', '<top level>',
                                     'must be a non-empty json list of records')
        return [self.parse_record(record, index) for index, record in enumerate(records)]

    def parse_record(self, record: Any, index: int) -> dict:
        """Check one record and reduce it to its data info.

        Args:
            record (Any): One element of the json list.
            index (int): Its position, for error messages.

        Returns:
            dict: The data info.

        Raises:
            DatasetFormatError: Naming the file, the record and the field at fault.
        """
        record_id = record.get('id') if isinstance(record, dict) else None
        where = describe_record(index, record_id)

        def fail(field: str, problem: str) -> DatasetFormatError:
            return DatasetFormatError(self.ann_file, where, field, problem)

        if not isinstance(record, dict):
            raise fail('<record>', f'a record must be a json object, got {type(record).__name__}')
        if not isinstance(record.get('image'), str) or not record['image']:
            raise fail('image', 'missing or not a non-empty string')
        turns = record.get('conversations')
        if not isinstance(turns, list) or not turns:
            raise fail('conversations', 'missing or not a non-empty list')
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get('from') not in _ROLES:
                raise fail(f'conversations[{j}].from',
                           f'must be "human" or "gpt", got '
                           f'{turn.get("from") if isinstance(turn, dict) else turn!r}')
            if not isinstance(turn.get('value'), str):
                raise fail(f'conversations[{j}].value', 'missing or not a string')
        start = 1 if turns[0]['from'] != 'human' else 0
        kept = turns[start:]
        for j, turn in enumerate(kept, start=start):
            expected = _ROLES[(j - start) % 2]
            if turn['from'] != expected:
                raise fail(f'conversations[{j}].from',
                           f'turns alternate from "human": expected {expected!r}, got '
                           f'{turn["from"]!r}')
        if not kept or kept[-1]['from'] != 'gpt':
            raise fail('conversations', 'must end with a "gpt" answer to a "human" turn')
        num_images = sum(turn['value'].count(DEFAULT_IMAGE_TOKEN) for turn in kept)
        if num_images > 1:
            raise fail('conversations', f'{num_images} {DEFAULT_IMAGE_TOKEN} tokens for one image')
        return dict(img_path=osp.join(self.data_prefix['img_path'], record['image']),
                    img_id=record_id, record_index=index, ann_file=self.ann_file,
                    conversations=[{'from': t['from'], 'value': t['value']} for t in kept])
