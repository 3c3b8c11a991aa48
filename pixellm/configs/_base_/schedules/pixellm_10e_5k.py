# The seed recipe's schedule: --epochs 10 x --steps_per_epoch 500 optimizer steps, micro-batch
# --batch_size 2 per GPU with --grad_accumulation_steps 10, AdamW --lr 3e-4 betas (0.9, 0.95)
# weight decay 0, DeepSpeed WarmupDecayLR (linear warm-up from 0 over 100 steps, then linear decay
# to 0 at the last step), gradient clipping 1.0, --precision bf16.
# mmengine counts micro-batches as iterations, so every step count is multiplied by the
# accumulation factor.
epochs = 10
steps_per_epoch = 500
grad_accumulation_steps = 10
lr = 3e-4
warmup_steps = 100
max_iters = epochs * steps_per_epoch * grad_accumulation_steps

optim_wrapper = dict(
    type='AmpOptimWrapper', dtype='bfloat16',
    accumulative_counts=grad_accumulation_steps,
    optimizer=dict(type='AdamW', lr=lr, betas=(0.9, 0.95), weight_decay=0.0),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, end_factor=1.0, by_epoch=False, begin=0,
         end=warmup_steps * grad_accumulation_steps),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.0, by_epoch=False,
         begin=warmup_steps * grad_accumulation_steps, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=steps_per_epoch * grad_accumulation_steps)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
