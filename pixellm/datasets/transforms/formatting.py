"""Pack a pipeline dict into the model's input: ``dict(inputs=..., data_samples=...)``."""
from typing import Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.structures import InstanceData, PixelData

from pixellm.registry import TRANSFORMS
from pixellm.structures import PixelLMDataSample

# Which transform writes each required metainfo key, for the error raised when one is missing.
_WRITTEN_BY = dict(img_path='MUSEDataset', ori_shape='LoadImageFromFile',
                   img_shape='ResizeLongestSide', question='SampleQuestion',
                   answer='BuildMuseConversation/ExpandSegTokens',
                   conversation='BuildMuseConversation', num_targets='SampleQuestion')


@TRANSFORMS.register_module()
class PackPixelLMInputs(BaseTransform):
    """Pack the image as ``inputs`` and everything else into a :class:`PixelLMDataSample`.

    ``inputs`` is the ``uint8`` image as a ``(3, h, w)`` tensor (resized, not padded, not
    normalised); the data sample holds the metainfo keys, the token fields (``input_ids``,
    ``labels``, ``prompt_ids``, when tokenized), ``gt_instances.masks`` (bool ``(N, H, W)`` at
    the original resolution, when decoded), ``gt_sem_seg.data`` (int64 ``(1, H, W)`` label map at
    the original resolution, from a transform that sets ``gt_seg_map``) and ``gt_ignore`` (bool ``(H, W)``,
    pixels left out of evaluation, when the record has them). The output collates with mmengine's
    ``pseudo_collate``.

    Args:
        meta_keys (Sequence[str]): Metainfo keys that must be present. Defaults to
            ``('img_path', 'ori_shape', 'img_shape', 'question', 'answer', 'conversation',
            'num_targets')``.
        optional_meta_keys (Sequence[str]): Metainfo keys copied when present (record identity for
            evaluation dumps). Defaults to ``('img_id', 'record_index', 'question_index',
            'sample_idx', 'ann_file', 'scale_factor')``.

    Raises:
        KeyError: A required metainfo key is missing; the message names the transform that
            writes it.
    """

    def __init__(self,
                 meta_keys: Sequence[str] = ('img_path', 'ori_shape', 'img_shape', 'question',
                                             'answer', 'conversation', 'num_targets'),
                 optional_meta_keys: Sequence[str] = ('img_id', 'record_index', 'question_index',
                                                      'sample_idx', 'ann_file', 'scale_factor')
                 ) -> None:
        self.meta_keys = tuple(meta_keys)
        self.optional_meta_keys = tuple(optional_meta_keys)

    def transform(self, results: dict) -> dict:
        """Pack.

        Args:
            results (dict): Pipeline dict.

        Returns:
            dict: ``dict(inputs=torch.uint8 (3, h, w), data_samples=PixelLMDataSample)``.
        """
        img = results['img']
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f'PackPixelLMInputs expects a uint8 (H, W, 3) image, got '
                             f'{img.dtype} {img.shape}')
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

        missing = [k for k in self.meta_keys if k not in results]
        if missing:
            hints = ', '.join(f'{k!r} (written by {_WRITTEN_BY.get(k, "an earlier transform")})'
                              for k in missing)
            raise KeyError(f'PackPixelLMInputs: the pipeline did not produce {hints}')
        meta = {k: results[k] for k in self.meta_keys}
        meta.update({k: results[k] for k in self.optional_meta_keys if k in results})

        data_sample = PixelLMDataSample(metainfo=meta)
        for key in ('input_ids', 'labels', 'prompt_ids'):
            if key in results:
                data_sample.set_data({key: torch.as_tensor(results[key], dtype=torch.long)})
        if 'gt_masks' in results:
            data_sample.gt_instances = InstanceData(
                masks=torch.from_numpy(np.ascontiguousarray(results['gt_masks'], dtype=bool)))
        if 'gt_seg_map' in results:
            data_sample.gt_sem_seg = PixelData(data=torch.from_numpy(
                np.ascontiguousarray(results['gt_seg_map'])[None].astype(np.int64)))
        if 'gt_ignore' in results:
            data_sample.gt_ignore = torch.from_numpy(
                np.ascontiguousarray(results['gt_ignore'], dtype=bool))
        return dict(inputs=inputs, data_samples=data_sample)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(meta_keys={self.meta_keys}, '
                f'optional_meta_keys={self.optional_meta_keys})')
