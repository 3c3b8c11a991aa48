# Deterministic toy experiment for the distributed tests: no dropout, noise-free data and a fixed
# sampler seed, so N processes with batch B train exactly like one process with batch N x B.
from mmengine.config import read_base

with read_base():
    from .toy_base import *  # noqa: F401,F403

custom_imports = dict(imports=['pixellm_engine_toy', 'pixellm_dist_toy'],
                      allow_failed_imports=False)

max_iters = 4
model.update(type='SeededEngineToyModel', dropout=0.0)  # noqa: F405
train_dataloader.update(  # noqa: F405
    sampler=dict(type='InfiniteSampler', shuffle=True, seed=0),
    dataset=dict(type='EngineToyDataset', length=24, noise=0.0))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10**6)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=max_iters)]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='LossRecordHook')]
