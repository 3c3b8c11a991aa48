"""Analysis of built models: analytic FLOPs (:mod:`pixellm.analysis.flops`)."""
from .flops import (FlopCountError, component_flops, flop_formula, forward_flops,
                    generate_flops, llm_flops, llm_flops_per_token, matmul_multiplier,
                    train_step_flops)

__all__ = ['FlopCountError', 'component_flops', 'flop_formula', 'forward_flops',
           'generate_flops', 'llm_flops', 'llm_flops_per_token', 'matmul_multiplier',
           'train_step_flops']
