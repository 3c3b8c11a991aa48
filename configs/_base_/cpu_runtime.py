# Runtime shared by the CPU configs (the offline demo's two stages): pixellm scope, gloo for
# `tools/train.py --launcher`, and no visualizer. The GPU recipes use default_runtime.py (nccl,
# TensorBoard overlays). A config sets its logging and checkpoint intervals from its schedule.
default_scope = 'pixellm'
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
log_level = 'INFO'
load_from = None
resume = False
log_processor = dict(by_epoch=False, window_size=50)
