# The tiny demo with a validation loop, started from a trained checkpoint (model.init_cfg, which
# also works under --deepspeed, where load_from must be a DeepSpeed folder). The test sets
# model.init_cfg.checkpoint and the data roots with --cfg-options.
from mmengine.config import read_base

with read_base():
    from ....projects.pixellm_tiny_demo.configs.pixellm_tiny_demo import *  # noqa: F401,F403

model.update(init_cfg=dict(type='Pretrained', checkpoint='set-by-cfg-options.pth'))  # noqa: F405
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='MUSEDataset', data_root='set-by-cfg-options', ann_file='muse_val.json',
                 data_prefix=dict(img_path='images'), pipeline=test_pipeline,  # noqa: F405
                 test_mode=True))
val_evaluator = dict(type='ReasonSegMetric')
val_cfg = dict(type='ValLoop')
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1, val_interval=1)
# Training reads with the deterministic test pipeline, so that a train file of one question gives
# every rank the same batch (the decoder's running statistics then match one process).
train_dataloader['dataset']['pipeline'] = test_pipeline  # noqa: F405
# No update: validation sees the checkpoint's weights (and the statistics of that one batch).
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=0.0, weight_decay=0.0))
param_scheduler = []
