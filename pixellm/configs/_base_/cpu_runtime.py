# Runtime of the CPU configs (the offline demo's two stages): the GPU recipes' default_runtime.py
# with gloo for `tools/train.py --launcher`, mmengine's default visualizer and no overlay hook,
# seed 0, and logging and checkpoints sized for a 2400-iteration run (a config sets its own).
from mmengine.config import read_base

with read_base():
    from .default_runtime import *  # noqa: F401,F403

env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
visualizer = None
custom_hooks = []
randomness = dict(seed=0)
default_hooks.update(  # noqa: F405
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2))
log_processor.update(window_size=50)  # noqa: F405
