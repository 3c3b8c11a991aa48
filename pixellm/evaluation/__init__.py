"""Evaluation of pixellm: metrics registered in ``pixellm.registry.METRICS``."""
from .metrics import ReasonSegMetric

__all__ = ['ReasonSegMetric']
