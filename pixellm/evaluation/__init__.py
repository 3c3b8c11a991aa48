"""Evaluation of pixellm: metrics registered in ``pixellm.registry.METRICS``."""
from .metrics import DumpPredictions, IoUMetric, ReasonSegMetric

__all__ = ['DumpPredictions', 'IoUMetric', 'ReasonSegMetric']
