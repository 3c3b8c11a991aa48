"""Metrics of pixellm; semantic-segmentation mIoU comes from mmseg's ``IoUMetric``."""
from .reason_seg_metric import ReasonSegMetric

__all__ = ['ReasonSegMetric']
