"""Evaluation of pixellm: metrics registered in ``pixellm.registry.METRICS``."""
from .metrics import DumpPredictions, ReasonSegMetric

__all__ = ['DumpPredictions', 'ReasonSegMetric']
