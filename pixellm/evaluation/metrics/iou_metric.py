"""mmsegmentation's ``IoUMetric`` (semantic-segmentation mIoU and a per-class IoU table), reachable
as ``dict(type='IoUMetric')`` under pixellm's default scope.

mmseg registers the class in its own ``METRICS`` registry (scope ``mmseg``), a sibling of
pixellm's, which a name without a scope does not reach. This module registers the same class in
pixellm's registry as well; the code is mmseg's, imported from ``mmseg.evaluation`` (which pulls
neither ``mmseg.models`` nor compiled ops). ``dict(type='mmseg.IoUMetric')`` names the same class.

The metric reads, from each data sample, ``pred_sem_seg.data`` and ``gt_sem_seg.data`` (label maps
of one size, ``(1, H, W)`` or ``(H, W)``) and, from ``dataset_meta``, ``classes`` (one name per
label value ``0..len(classes)-1``; other values count in no class). It returns ``aAcc``, ``mIoU``
and ``mAcc`` in percent and logs the per-class IoU and accuracy.
"""
from mmseg.evaluation import IoUMetric

from pixellm.registry import METRICS

METRICS.register_module(name='IoUMetric', module=IoUMetric)

__all__ = ['IoUMetric']
