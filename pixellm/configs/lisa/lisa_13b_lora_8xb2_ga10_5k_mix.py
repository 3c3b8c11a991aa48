# LISA-13B-llama2-v1, the official recipe (LISA's train_ds.py defaults, whose --version is
# llava-llama-2-13b-chat-lightning-preview): CLIP ViT-L/14 at 224 for the LLM, SAM ViT-H for the
# masks, LoRA, 5,000 optimizer steps (10 epochs x 500) of the sem_seg/refer_seg/vqa/reason_seg mix at
# rates 9:3:3:1, assuming 8 GPUs x batch 2 x 10 accumulation steps (160 samples per step),
# validating on ReasonSeg val after every epoch. Every official flag and the key it maps to:
# configs/lisa/README.md. Data layout: docs/datasets.md. Train with
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/lisa/lisa_13b_lora_8xb2_ga10_5k_mix.py --launcher pytorch
from mmengine.config import read_base

with read_base():
    from .._base_.datasets.lisa_mix import *  # noqa: F401,F403
    from .._base_.default_runtime import *  # noqa: F401,F403
    from .._base_.models.lisa_13b import *  # noqa: F401,F403
    from .._base_.schedules.pixellm_10e_5k import *  # noqa: F401,F403

# ================================ settings ================================
num_gpus = 8                     # world size the recipe assumes; only the mix length depends on it
batch_size = 2                   # --batch_size, per GPU and micro-step
model_max_length = 512           # --model_max_length
# The official collate_fn cuts every training sequence to model_max_length - 255 ids, the image
# counting as one id, so that the 256 image tokens keep the LLM within model_max_length.
max_text_length = model_max_length - 255  # LISA's 256 CLIP tokens (16 x 16)
# HybridDataset's samples_per_epoch; the mix is as long as the whole schedule so that every sample
# is a fresh draw, as the official loader draws anew on every fetch.
samples_per_epoch = batch_size * grad_accumulation_steps * steps_per_epoch * num_gpus  # noqa: F405
# mmengine counts micro-batches as iterations.
iters_per_epoch = steps_per_epoch * grad_accumulation_steps  # noqa: F405

# =========================== model and text ==============================
# The model is _base_/models/lisa_13b.py. Its text_processor (tokenizer, [SEG], chat template
# --conv_type llava_v1, <im_start>/<im_end>) is shared by the model and every pipeline step.
text_processor = dict(text_processor,  # noqa: F405
                      tokenizer=dict(text_processor['tokenizer'],  # noqa: F405
                                     model_max_length=model_max_length))

# ================================== data ==================================
# Shared tail of every pipeline: write each target as [SEG], apply the LLM's chat template (both
# with the text processor), resize the longest side to SAM's 1024 (the data preprocessor pads and
# normalises with SAM's statistics; LISA makes the CLIP view from it), pack.
train_tail = [
    dict(type='ExpandSegTokens'),
    dict(type='TokenizeConversation', max_length=max_text_length,
         # A sample whose targets do not fit is drawn again instead of stopping the run (the
         # official collate_fn cuts it silently, leaving masks without their tokens).
         overflow='skip'),
    dict(type='ResizeLongestSide', size=image_size),  # noqa: F405
    dict(type='PackPixelLMInputs'),
]
# Evaluation sequences are not cut (the official validation tokenizes them whole).
test_tail = [
    dict(train_tail[0]),
    dict(train_tail[1], max_length=None, overflow='error'),
    dict(train_tail[2]),
    dict(train_tail[3]),
]

train_dataloader = dict(
    batch_size=batch_size, num_workers=4, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type='SampleRateMixDataset',
        groups={
            name: [dict(source, pipeline=source['pipeline'] + train_tail) for source in sources]
            for name, sources in train_groups.items()  # noqa: F405
        },
        sample_rates=sample_rates,  # noqa: F405
        num_samples=samples_per_epoch * epochs,  # noqa: F405
        seed=0))
# --val_batch_size 1, as the official validation asserts.
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(val_dataset, pipeline=val_dataset['pipeline'] + test_tail))  # noqa: F405
test_dataloader = val_dataloader
test_evaluator = val_evaluator  # noqa: F405

# ========================= schedule and optimizer =========================
# From configs/_base_/schedules/pixellm_10e_5k.py: AdamW lr 3e-4, betas (0.9, 0.95), no weight
# decay, 100 warm-up steps then linear decay to 0, gradient clipping 1.0, bf16 autocast,
# accumulative_counts=10; 50,000 iterations = 5,000 optimizer steps, validation every epoch.

# ================================ runtime =================================
# Log every optimizer step (--print_freq 1); keep the latest checkpoint and the best one by
# ReasonSeg val gIoU, written after every epoch, as the official run does.
default_hooks.update(  # noqa: F405
    logger=dict(type='LoggerHook', interval=grad_accumulation_steps),  # noqa: F405
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=iters_per_epoch,
                    max_keep_ckpts=1, save_best='gIoU', rule='greater'))
