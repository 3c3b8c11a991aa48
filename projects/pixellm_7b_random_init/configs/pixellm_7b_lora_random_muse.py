# The PixelLM-7B recipe (model, trainable set, AmpOptimWrapper bf16, gradient checkpointing) on
# random weights and the generated MUSE-format data, to check a GPU set-up end to end: training,
# evaluation, chat and DeepSpeed run as they would on the real checkpoints and data. The weights
# come from make_random_weights.py (a LLaMA-7B-shaped folder with the shipped tokenizer padded to
# LLaMA's 32000 ids, and a CLIP ViT-L/14-336 folder); the data from
# projects/pixellm_tiny_demo/tools/generate_demo_data.py. See this project's README for the commands.
from mmengine.config import read_base

with read_base():
    from ....configs._base_.datasets.pixellm_eval import muse_evaluator, muse_test
    from ....configs.pixellm.pixellm_7b_lora_8xb2_ga10_5k_mix import *  # noqa: F401,F403

weights_root = 'work_dirs/random_7b'    # make_random_weights.py --out
muse_root = 'data/muse_demo'            # projects/pixellm_tiny_demo/tools/generate_demo_data.py --out
llava_path = weights_root + '/llava'
clip_path = weights_root + '/clip'

# =========================== model and text ==============================
text_processor = dict(text_processor,  # noqa: F405
                      tokenizer=dict(text_processor['tokenizer'],  # noqa: F405
                                     name_or_path=llava_path))
model['llm'].update(pretrained=llava_path)  # noqa: F405
model['vision_encoder'].update(pretrained=clip_path)  # noqa: F405
# A random LLM rarely writes EOS: keep test-time generation short.
model.update(max_new_tokens=64)  # noqa: F405

# ================================== data ==================================
# The recipe's MUSE pipeline and tail (the text processor reaches them through load_config).
data_tail = train_tail  # noqa: F405
eval_tail = test_tail  # noqa: F405
train_dataloader = dict(
    batch_size=batch_size, num_workers=2, persistent_workers=True,  # noqa: F405
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='MUSEDataset', data_root=muse_root, ann_file='muse_train.json',
                 data_prefix=dict(img_path='images'),
                 pipeline=muse_pipeline + data_tail))  # noqa: F405
test_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='MUSEDataset', data_root=muse_root, ann_file='muse_val.json',
                 data_prefix=dict(img_path='images'), test_mode=True, indices=4,
                 pipeline=muse_test['pipeline'] + eval_tail))  # noqa: F405
test_evaluator = muse_evaluator  # noqa: F405
val_dataloader = None
val_evaluator = None
val_cfg = None

# ========================= schedule and optimizer =========================
# 20 iterations, each an optimizer step at the recipe's peak learning rate (the recipe warms up over
# 1,000 iterations and accumulates 10): enough for the loss to fall from random weights.
max_iters = 20
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters + 1)
optim_wrapper.update(accumulative_counts=1)  # noqa: F405
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=max_iters)]
default_hooks.update(  # noqa: F405
    logger=dict(type='LoggerHook', interval=1),
    # The weights only (no optimizer state, about 3 GB of the 7B run): enough for tools/test.py and
    # tools/chat.py, not for --resume.
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1,
                    save_optimizer=False))
