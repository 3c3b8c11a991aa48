"""Metrics of pixellm, and the prediction dump of ``tools/test.py --dump``; semantic-segmentation
mIoU comes from mmseg's ``IoUMetric``."""
from .dump_predictions import DumpPredictions
from .reason_seg_metric import ReasonSegMetric

__all__ = ['DumpPredictions', 'ReasonSegMetric']
