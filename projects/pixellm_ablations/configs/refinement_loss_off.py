# Ablation: plain mask BCE (no target refinement), as the official code trains.
from mmengine.config import read_base

with read_base():
    from ...pixellm_tiny_demo.configs.pixellm_tiny_demo import *  # noqa: F401,F403

model.update(loss_mask=dict(type='MaskBCELoss', loss_weight=2.0))  # noqa: F405
