# Epoch-based toy experiment: DefaultSampler re-shuffled per epoch, checkpoint per epoch.
from mmengine.config import read_base

with read_base():
    from .toy_base import *  # noqa: F401,F403

custom_imports = dict(imports=['pixellm_engine_toy'], allow_failed_imports=False)

max_epochs = 4
train_dataloader.update(
    dataset=dict(type='EngineToyDataset', length=12, noise=0.1),
    sampler=dict(type='DefaultSampler', shuffle=True))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=2)
param_scheduler = [dict(type='MultiStepLR', milestones=[2], gamma=0.5, by_epoch=True)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=True))
# Inert unless a test sets --cfg-options custom_hooks.0.after_epoch=K to simulate a crash.
custom_hooks = [dict(type='KillProcessHook')]
