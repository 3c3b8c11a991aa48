"""Metrics of pixellm, and the prediction dump of ``tools/test.py --dump``; semantic-segmentation
mIoU is mmseg's ``IoUMetric``, registered here too (``iou_metric``)."""
from .dump_predictions import DumpPredictions
from .iou_metric import IoUMetric
from .reason_seg_metric import ReasonSegMetric

__all__ = ['DumpPredictions', 'IoUMetric', 'ReasonSegMetric']
