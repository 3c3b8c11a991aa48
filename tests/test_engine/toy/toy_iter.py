# Iteration-based toy experiment in the style of the pixellm configs: lazy base import and
# components from a plugin listed in custom_imports.
from mmengine.config import read_base

with read_base():
    from .toy_base import *  # noqa: F401,F403

custom_imports = dict(imports=['pixellm_engine_toy'], allow_failed_imports=False)

warmup_iters = max_iters // 2
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup_iters, end=max_iters,
         eta_min=1e-4),
]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False, max_keep_ckpts=3),
    logger=dict(type='LoggerHook', interval=1))
# Inert unless a test sets --cfg-options custom_hooks.0.after_iter=K to simulate a crash.
custom_hooks = [dict(type='KillProcessHook')]
