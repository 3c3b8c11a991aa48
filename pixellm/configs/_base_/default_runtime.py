# Runtime shared by the GPU recipes: pixellm scope, logging, checkpoints (a recipe sets their
# interval from its schedule; tools/train.py makes them atomic).
default_scope = 'pixellm'
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=10),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'),
               dist_cfg=dict(backend='nccl'))
# Scalars and validation drawings (PixelLMVisualizationHook: prediction | ground truth of a few
# fixed validation samples, drawn by PixelLMVisualizer) go to <work_dir>/<timestamp>/vis_data and,
# when the tensorboard package is installed, to TensorBoard (tools/train.py leaves the backend out
# otherwise). `tools/test.py --show-dir DIR` makes the same hook write every test prediction.
visualizer = dict(type='PixelLMVisualizer',
                  vis_backends=[dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
custom_hooks = [dict(type='PixelLMVisualizationHook', interval=50, max_samples=4)]
log_processor = dict(by_epoch=False, window_size=10)
log_level = 'INFO'
randomness = dict(seed=42)
load_from = None
resume = False
