# PixelLM at CPU size on MUSE-format data: the paper's model (the classes and losses of the
# 7B/13B recipes, tiny random-init shapes from _base_/models/pixellm_tiny.py), its MUSE pipeline
# and gIoU/cIoU, trainable on a CPU in minutes. `data_root` holds `muse_train.json`,
# `muse_val.json` and `images/` (MUSE's format; projects/pixellm_tiny_demo/tools/generate_demo_data.py
# writes a generated dataset there). The offline demo (projects/pixellm_tiny_demo) builds on it.
from mmengine.config import read_base

with read_base():
    from .._base_.cpu_runtime import *  # noqa: F401,F403
    from .._base_.models.pixellm_tiny import *  # noqa: F401,F403

data_root = 'data/muse_demo/'
max_iters = 2400
batch_size = 8

# The text side (tokenizer, codebook, chat template) is `text_processor` of
# _base_/models/pixellm_tiny.py, shared by the model and the pipelines; an ablation changes it in
# one place.
model.update(  # noqa: F405
    # Random-init CLIP and LLaMA are trained whole; with real CLIP/LLaVA weights (the 7B/13B
    # recipes) CLIP stays frozen and the LLM gets LoRA.
    vision_encoder=dict(model['vision_encoder'], frozen=False),  # noqa: F405
    llm=dict(model['llm'], freeze=False, lora=None))  # noqa: F405

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleQuestion'),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildMuseConversation'),
    dict(type='ExpandSegTokens'),
    dict(type='TokenizeConversation', max_length=512),
    dict(type='ResizeLongestSide', size=image_size),  # noqa: F405
    dict(type='PackPixelLMInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleQuestion'),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildMuseConversation', deterministic=True),
    dict(type='ExpandSegTokens'),
    dict(type='TokenizeConversation', max_length=512),
    dict(type='ResizeLongestSide', size=image_size),  # noqa: F405
    dict(type='PackPixelLMInputs'),
]

# The pipeline runs in the training process: on 2 CPU cores a loader worker would take CPU from
# the step's two threads.
train_dataloader = dict(
    batch_size=batch_size, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='MUSEDataset', data_root=data_root, ann_file='muse_train.json',
                 data_prefix=dict(img_path='images'), pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=16, num_workers=1, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='MUSEDataset', data_root=data_root, ann_file='muse_val.json',
                 data_prefix=dict(img_path='images'), pipeline=test_pipeline, test_mode=True))
# gIoU/cIoU twice: with the k-th mask of the answer scored against the k-th target (answers list
# their targets in reading order: by top edge, then left edge), and under the official MUSE
# protocol of the MUSE eval configs (IoU-optimal matching; a mask beyond the targets counts as a
# wrong target), as muse_protocol/*.
test_evaluator = [
    dict(type='ReasonSegMetric'),
    dict(type='ReasonSegMetric', matching='hungarian', count_extra_preds=True,
         prefix='muse_protocol'),
]
# No validation during training; tools/test.py evaluates the final checkpoint.
val_dataloader = None
val_evaluator = None

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
val_cfg = None
test_cfg = dict(type='TestLoop')

# PyTorch's fused AdamW: one kernel over all weights (CPU support since torch 2.4).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0, fused=True),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
