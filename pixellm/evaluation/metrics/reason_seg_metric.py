"""gIoU / cIoU of reasoning segmentation (MUSE, ReasonSeg, refCOCO), as LISA and PixelLM report.

Every target mask of a question is scored by its foreground intersection and union with the
prediction assigned to it; the metric also splits the scores by how many targets the question has.
"""
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement
from scipy.optimize import linear_sum_assignment

from pixellm.registry import METRICS

MATCHINGS = ('order', 'hungarian')


def _as_dict(element: Any) -> Any:
    # Evaluator.process already calls to_dict(); a direct metric.process() call may not.
    return element.to_dict() if isinstance(element, BaseDataElement) else element


def _binary_masks(masks: Any, where: str) -> np.ndarray:
    """Turn a mask tensor or array into a CPU bool array, refusing non-binary values.

    Args:
        masks (Tensor | np.ndarray): Masks, bool or {0, 1} of any numeric dtype.
        where (str): What the masks are, for error messages.

    Returns:
        np.ndarray: Bool array of the same shape.
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu()
        if masks.dtype != torch.bool:
            if not bool(((masks == 0) | (masks == 1)).all()):
                raise ValueError(f'{where} must be binary (bool or 0/1); threshold the logits '
                                 f'(> 0) before evaluation.')
            masks = masks.bool()
        return masks.numpy()
    if isinstance(masks, np.ndarray):
        if masks.dtype != np.bool_:
            if not bool(((masks == 0) | (masks == 1)).all()):
                raise ValueError(f'{where} must be binary (bool or 0/1); threshold the logits '
                                 f'(> 0) before evaluation.')
            masks = masks.astype(bool)
        return masks
    raise TypeError(f'{where} must be a torch.Tensor or numpy.ndarray, got {type(masks).__name__}.')


def _instance_masks(sample: dict, field: str, name: str) -> np.ndarray:
    instances = _as_dict(sample.get(field))
    if not isinstance(instances, dict) or 'masks' not in instances:
        raise KeyError(f'{name}: the data sample has no {field}.masks; ReasonSegMetric needs '
                       f'gt_instances.masks and pred_instances.masks.')
    return _binary_masks(instances['masks'], f'{name}: {field}.masks')


def _iou(intersection: int, union: int) -> float:
    # An empty target predicted empty is a correct answer, as LISA/PixelLM count it.
    return intersection / union if union > 0 else 1.0


@METRICS.register_module()
class ReasonSegMetric(BaseMetric):
    """gIoU and cIoU over target masks, overall and by number of targets per question.

    Each data sample is one question: ``gt_instances.masks`` ``(N, H, W)`` holds its targets in
    answer order and ``pred_instances.masks`` ``(M, H, W)`` the predicted masks (bool or 0/1;
    threshold logits first). Predictions are assigned to targets by ``matching``:

    - ``'order'``: prediction ``i`` to target ``i``, as PixelLM's ``validate`` does for
      referring and reasoning segmentation (targets and ``[SEG]`` tokens share answer order).
    - ``'hungarian'``: the one-to-one assignment that maximises the summed IoU (scipy's
      ``linear_sum_assignment``), as the official MUSE evaluation does. The official code
      matches on a BCE + Dice cost of the logits at random points; with only binary
      predictions available here the cost is the exact IoU, which is deterministic.

    A target left without a prediction (``M < N``, or not assigned) counts as predicted empty:
    intersection 0, union the target area. A prediction left without a target (``M > N``) is
    ignored by default. The official MUSE evaluation instead counts it as a target with an empty
    ground truth (intersection 0, union the prediction area, so IoU 0, or 1 when the prediction
    is empty too); ``count_extra_preds=True`` reproduces that to compare with the paper.

    Per target, IoU is ``I / U`` with 1.0 when ``U == 0`` (empty target, empty prediction).
    The official code uses ``I / (U + 1e-5)``, which differs by under 1e-5 relative.

    Returned keys (fractions in [0, 1], not percentages, like LISA/PixelLM print them):

    - ``gIoU``: mean of the per-target IoU.
    - ``cIoU``: sum of intersections over sum of unions (1.0 if every union is 0; the official
      code gives 0.0 there).
    - ``num_samples``: number of questions; ``num_targets``: number of scored masks.
    - ``gIoU@k``, ``cIoU@k``, ``num_samples@k``, ``num_targets@k`` for each bucket of questions
      with ``k`` ground-truth targets, ``k = 1 .. open_bucket_from - 1``, and ``@{open}+`` for
      the questions with ``open_bucket_from`` targets or more (defaults: ``@1``, ``@2``, ``@3``,
      ``@4+``). A bucket without scored masks is left out; ``@0`` appears only when
      ``count_extra_preds`` scores predictions of questions without targets.

    Args:
        matching (str): ``'order'`` or ``'hungarian'``. Defaults to ``'order'``.
        count_extra_preds (bool): Score unassigned predictions against an empty target, as the
            official MUSE evaluation does. Defaults to False.
        open_bucket_from (int): Number of targets from which questions share one bucket.
            Defaults to 4.
        collect_device (str): Device used to gather results across ranks, ``'cpu'`` or
            ``'gpu'``. Defaults to ``'cpu'``.
        prefix (str, optional): Prefix of the keys, e.g. ``'muse_val'`` when several datasets
            are evaluated. Defaults to None (keys as listed above).
        collect_dir (str, optional): Directory for gathering results on CPU. Defaults to None.
    """

    default_prefix: Optional[str] = None

    def __init__(self,
                 matching: str = 'order',
                 count_extra_preds: bool = False,
                 open_bucket_from: int = 4,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None,
                 collect_dir: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        if matching not in MATCHINGS:
            raise ValueError(f'matching must be one of {MATCHINGS}, got {matching!r}.')
        if open_bucket_from < 1:
            raise ValueError(f'open_bucket_from must be at least 1, got {open_bucket_from}.')
        self.matching = matching
        self.count_extra_preds = count_extra_preds
        self.open_bucket_from = open_bucket_from

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        """Score the masks of each question of a batch and keep the integer statistics.

        Args:
            data_batch (Any): The batch from the dataloader (unused: everything needed is in
                the data samples).
            data_samples (Sequence[dict | BaseDataElement]): Model outputs with
                ``gt_instances.masks`` and ``pred_instances.masks``; optional ``gt_ignore``
                (``(H, W)`` pixels left out of every score, ReasonSeg's ignore regions);
                ``img_path`` (metainfo), when present, names the sample in errors.
        """
        for index, data_sample in enumerate(data_samples):
            sample = _as_dict(data_sample)
            name = sample.get('img_path') or f'data sample {index} of the batch'
            gt = _instance_masks(sample, 'gt_instances', name)
            pred = _instance_masks(sample, 'pred_instances', name)
            if gt.ndim != 3:
                raise ValueError(f'{name}: gt_instances.masks must be (N, H, W), got shape '
                                 f'{gt.shape}.')
            if pred.size == 0:
                # A model that wrote no [SEG] token may return an empty array of any shape.
                pred = np.zeros((0, ) + gt.shape[1:], dtype=bool)
            if pred.ndim != 3 or pred.shape[1:] != gt.shape[1:]:
                raise ValueError(f'{name}: pred_instances.masks has shape {pred.shape} but '
                                 f'gt_instances.masks has shape {gt.shape}; predictions must '
                                 f'be resized to the ground-truth size.')
            if sample.get('gt_ignore') is not None:
                # ReasonSeg's ignore regions (label 255 officially) count in no intersection or
                # union, for predictions and targets alike.
                keep = ~_binary_masks(sample['gt_ignore'], f'{name}: gt_ignore')
                if keep.shape != gt.shape[1:]:
                    raise ValueError(f'{name}: gt_ignore has shape {keep.shape} but the masks are '
                                     f'{gt.shape[1:]}.')
                gt, pred = gt & keep, pred & keep
            intersections, unions = self._score(pred, gt)
            self.results.append(
                dict(num_gt=int(gt.shape[0]),
                     intersections=np.asarray(intersections, dtype=np.int64),
                     unions=np.asarray(unions, dtype=np.int64)))

    def _assign(self, intersection: np.ndarray, union: np.ndarray) -> List[Tuple[int, int]]:
        """Pairs ``(pred_index, gt_index)`` chosen by ``self.matching``."""
        num = min(intersection.shape)
        if self.matching == 'order' or num == 0:
            return [(i, i) for i in range(num)]
        iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        return list(zip(rows.tolist(), cols.tolist()))

    def _score(self, pred: np.ndarray, gt: np.ndarray) -> Tuple[List[int], List[int]]:
        """Intersection and union of every scored mask: targets in order, then extras."""
        num_pred, num_gt = pred.shape[0], gt.shape[0]
        # An explicit pixel count because reshape(0, -1) is ambiguous for zero masks.
        num_pixels = int(np.prod(gt.shape[1:]))
        pred_flat = pred.reshape(num_pred, num_pixels)
        gt_flat = gt.reshape(num_gt, num_pixels)
        pred_area = np.count_nonzero(pred_flat, axis=1).astype(np.int64)
        gt_area = np.count_nonzero(gt_flat, axis=1).astype(np.int64)
        if self.matching == 'hungarian':
            candidates = [(i, j) for i in range(num_pred) for j in range(num_gt)]
        else:
            # Order matching only ever pairs i with i; the other products are never read.
            candidates = [(i, i) for i in range(min(num_pred, num_gt))]
        intersection = np.zeros((num_pred, num_gt), dtype=np.int64)
        for i, j in candidates:
            intersection[i, j] = np.count_nonzero(pred_flat[i] & gt_flat[j])
        union = pred_area[:, None] + gt_area[None, :] - intersection

        pairs = self._assign(intersection, union)
        pred_of_gt = {j: i for i, j in pairs}
        intersections, unions = [], []
        for j in range(num_gt):
            if j in pred_of_gt:
                intersections.append(int(intersection[pred_of_gt[j], j]))
                unions.append(int(union[pred_of_gt[j], j]))
            else:
                intersections.append(0)
                unions.append(int(gt_area[j]))
        if self.count_extra_preds:
            assigned = {i for i, _ in pairs}
            for i in range(num_pred):
                if i not in assigned:
                    intersections.append(0)
                    unions.append(int(pred_area[i]))
        return intersections, unions

    def _bucket(self, num_gt: int) -> str:
        if num_gt >= self.open_bucket_from:
            return f'@{self.open_bucket_from}+'
        return f'@{num_gt}'

    @staticmethod
    def _summary(intersections: np.ndarray, unions: np.ndarray) -> Tuple[float, float]:
        ious = [_iou(int(i), int(u)) for i, u in zip(intersections, unions)]
        total_union = int(unions.sum())
        ciou = int(intersections.sum()) / total_union if total_union > 0 else 1.0
        return float(np.mean(ious)), float(ciou)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Reduce the per-question statistics to gIoU and cIoU, overall and by bucket.

        Args:
            results (list[dict]): ``num_gt``, ``intersections``, ``unions`` of every question,
                gathered from all ranks.

        Returns:
            dict[str, float]: The keys listed in the class docstring.
        """
        by_bucket = defaultdict(lambda: ([], [], [0]))
        for result in results:
            inters, unions, count = by_bucket[min(result['num_gt'], self.open_bucket_from)]
            inters.append(result['intersections'])
            unions.append(result['unions'])
            count[0] += 1
        all_i = np.concatenate([r['intersections'] for r in results] or [np.zeros(0, np.int64)])
        all_u = np.concatenate([r['unions'] for r in results] or [np.zeros(0, np.int64)])
        metrics = dict(num_samples=len(results), num_targets=int(all_i.size))
        if all_i.size == 0:
            print_log('ReasonSegMetric: no target mask was scored; gIoU and cIoU are reported '
                      'as 0.', logger='current')
            metrics.update(gIoU=0.0, cIoU=0.0)
            return metrics
        metrics['gIoU'], metrics['cIoU'] = self._summary(all_i, all_u)
        for num_gt in sorted(by_bucket):
            inters, unions, count = by_bucket[num_gt]
            bucket_i, bucket_u = np.concatenate(inters), np.concatenate(unions)
            if bucket_i.size == 0:
                continue
            key = self._bucket(num_gt)
            metrics[f'gIoU{key}'], metrics[f'cIoU{key}'] = self._summary(bucket_i, bucket_u)
            metrics[f'num_samples{key}'] = count[0]
            metrics[f'num_targets{key}'] = int(bucket_i.size)
        return metrics
