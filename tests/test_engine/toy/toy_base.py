# Settings and data shared by the engine test configs (a plain config: no imports).
max_iters = 8
batch_size = 4
model = dict(type='EngineToyModel', dropout=0.5)
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='EngineToyDataset', length=24, noise=0.1))
val_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='EngineToyDataset', length=8, noise=0.1))
test_dataloader = val_dataloader
val_evaluator = dict(type='EngineToyMetric')
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=0.01, weight_decay=0.01))
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_scope = 'pixellm'
randomness = dict(seed=2024)
log_level = 'WARNING'
# mmengine's own visualizer, built in mmengine's scope: the toy runs need no pixellm visualizer
# (and pixellm's VISUALIZERS location, pixellm.visualization, may not exist yet).
visualizer = dict(type='Visualizer', _scope_='mmengine',
                  vis_backends=[dict(type='LocalVisBackend', _scope_='mmengine')])
