"""Write every test prediction to json: question, generated answer, one RLE mask per target."""
import json
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from pixellm.registry import METRICS
from .reason_seg_metric import _as_dict, _binary_masks

# Identifiers a test pipeline may carry in the metainfo (PackPixelLMInputs' optional keys).
_ID_KEYS = ('img_id', 'record_index', 'question_index')


@METRICS.register_module()
class DumpPredictions(BaseMetric):
    """Collect every question's prediction and write them to ``out_file`` as one json list.

    Each item is ``{"img_path", "question", "answer", "raw_answer", "truncated", "targets"}``
    plus the ids the pipeline carried (``img_id``, ``record_index``, ``question_index``):
    ``question`` is the question as asked (metainfo ``question``, without the chat template),
    ``raw_answer`` the generated text with its codebook tokens and ``answer`` the same text with
    each target written ``[k]``, as ``tools/chat.py`` prints it. ``targets`` lists, in answer
    order, ``{"index": k, "label": <the words naming the target>, "score": <mean foreground
    probability>, "segmentation": {"size": [H, W], "counts": <COCO compressed RLE>}}`` at the
    image's resolution (``pycocotools.mask.decode`` reads it back). It is the record
    ``tools/chat.py --save-rle`` writes for one answer, so dumps and chat outputs read alike.

    It computes no metric (an empty dict); ``tools/test.py --dump FILE`` adds it to the test
    evaluator. In distributed runs the items of all ranks are gathered and rank 0 writes them,
    in dataset order.

    Args:
        out_file (str): The json file to write (folders are created; an existing file is
            replaced).
        codebook_tokens (Sequence[str]): The model's codebook tokens (``model.codebook.tokens``),
            to find the targets in the answer text. Defaults to ``()`` (answers kept as
            generated, targets unnamed).
        collect_device (str): Device used to gather results across ranks. Defaults to 'cpu'.
    """

    default_prefix = 'dump'

    def __init__(self, out_file: str, codebook_tokens: Sequence[str] = (),
                 collect_device: str = 'cpu', prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not str(out_file).endswith('.json'):
            raise ValueError(f'DumpPredictions: out_file must be a .json file, got {out_file!r}')
        self.out_file = out_file
        self.codebook_tokens = tuple(codebook_tokens)

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        """Turn each prediction of a batch into a json-safe item.

        Args:
            data_batch (Any): The batch (unused).
            data_samples (Sequence[dict | BaseDataElement]): Model outputs with metainfo
                ``img_path``, ``question`` and ``pred_text`` and ``pred_instances.masks``
                (``(N, H, W)``; ``scores`` optional).
        """
        from pixellm.datasets.dataset_utils import encode_mask
        from pixellm.visualization.overlay import number_targets
        for index, data_sample in enumerate(data_samples):
            sample = _as_dict(data_sample)
            name = sample.get('img_path') or f'data sample {index} of the batch'
            missing = [key for key in ('img_path', 'question', 'pred_text') if key not in sample]
            if missing:
                raise KeyError(f'{name}: DumpPredictions needs the metainfo {missing}; '
                               f'present: {sorted(sample)}')
            pred = _as_dict(sample.get('pred_instances')) or {}
            masks = pred.get('masks')
            masks = (np.zeros((0, 0, 0), dtype=bool) if masks is None
                     else _binary_masks(masks, f'{name}: pred_instances.masks'))
            if masks.ndim == 2:
                masks = masks[None]
            scores = pred.get('scores')
            scores = ([float(s) for s in np.asarray(scores.cpu() if hasattr(scores, 'cpu')
                                                    else scores).reshape(-1)]
                      if scores is not None else [None] * len(masks))
            raw = str(sample['pred_text'])
            answer, labels = number_targets(raw, self.codebook_tokens)
            item = dict(img_path=str(sample['img_path']), question=str(sample['question']),
                        answer=answer, raw_answer=raw,
                        truncated=bool(sample.get('pred_truncated', False)))
            for key in _ID_KEYS:
                if key in sample:
                    value = sample[key]
                    item[key] = value.item() if hasattr(value, 'item') else value
            item['targets'] = [
                dict(index=k + 1, label=labels[k] if k < len(labels) else '',
                     score=scores[k] if k < len(scores) else None,
                     segmentation=encode_mask(mask))
                for k, mask in enumerate(masks)]
            self.results.append(item)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Write the gathered items (rank 0 only) and return no metric.

        Args:
            results (list[dict]): The items of every rank, in dataset order.

        Returns:
            dict: Empty.
        """
        from pixellm.engine.checkpoint import atomic_write_text
        folder = osp.dirname(osp.abspath(self.out_file))
        os.makedirs(folder, exist_ok=True)
        atomic_write_text(json.dumps(results, indent=1), self.out_file)
        print_log(f'DumpPredictions: {len(results)} predictions written to {self.out_file}',
                  logger='current')
        return {}
