# Stage 1 of the offline demo: pre-train the tiny CLIP tower of `pixellm_tiny_demo.py` alone, as a
# linear semantic-segmentation model on the MUSE training images (every object labelled with its
# category, RenderSemanticMap). PixelLM starts from a pre-trained CLIP; the demo cannot download
# one, and the random tower trained inside PixelLM learns colour but not shape (see
# VisionEncoderPretrainer). At the end SaveVisionEncoderHook writes the tower as a Hugging Face
# folder, `<work_dir>/vision_encoder`, which stage 2 loads with
# `--cfg-options model.vision_encoder.pretrained=<that folder>` (tools/run_demo.py does both).
# `tools/test.py <this config> <checkpoint>` scores the model on the val images with mmseg's
# IoUMetric: mIoU over background and the five shapes, and a per-class IoU table in the log.
from mmengine.config import read_base

with read_base():
    from ....configs._base_.cpu_runtime import *  # noqa: F401,F403
    from ....configs._base_.models.pixellm_tiny import *  # noqa: F401,F403

custom_imports = dict(imports=['projects.pixellm_tiny_demo.pixellm_tiny_demo'],
                      allow_failed_imports=False)

data_root = 'data/muse_demo/'
# Label value i is classes[i]: background, then the generated shapes by category id
# (muse_scenes.CATEGORY_IDS). IoUMetric names the rows of its per-class table with them.
classes = ('background', 'circle', 'square', 'triangle', 'star', 'diamond')
max_iters = 3000
batch_size = 8

model = dict(
    type='VisionEncoderPretrainer',
    # The same tower as the demo's PixelLM (its config), trained, with no attention mask over
    # padded patches.
    vision_encoder=dict(model['vision_encoder'], frozen=False, mask_padding=False),  # noqa: F405
    # Label values: 0 (background) and the generated shapes' COCO-style category ids 1..5.
    num_classes=len(classes),
    # One class per patch (the patch's most frequent object class), not the soft fractions.
    target='majority')

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RenderSemanticMap'),
    dict(type='ResizeLongestSide', size=image_size),  # noqa: F405
    dict(type='PackPixelLMInputs', meta_keys=('img_path', 'ori_shape', 'img_shape')),
]
# Loading in the main process: a step is 17 ms of model and 14 ms of loading, and on 2 cores a
# loader worker competing with the model's threads made a step 45 ms against 35 ms.
train_dataloader = dict(
    batch_size=batch_size, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(type='MUSEDataset', data_root=data_root, ann_file='muse_train.json',
                 data_prefix=dict(img_path='images'), pipeline=train_pipeline))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
# No validation during training. The test split is the val images, one item per image
# (MUSEDataset with test_mode=False: the pipeline reads no question, and test_mode=True would
# repeat each image once per question). Predictions are label maps at the original image size,
# scored against the full-resolution maps of RenderSemanticMap.
val_dataloader = val_evaluator = val_cfg = None
test_pipeline = train_pipeline
test_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='MUSEDataset', data_root=data_root, ann_file='muse_val.json',
                 data_prefix=dict(img_path='images'), pipeline=test_pipeline, test_mode=False,
                 metainfo=dict(classes=classes)))
# mmseg's IoUMetric (registered in pixellm's METRICS): aAcc, mIoU, mAcc in percent, and the
# per-class IoU/Acc table in the log; the class names come from the dataset's metainfo.
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0, fused=True))
param_scheduler = None

# A log line every 100 iterations and one checkpoint, the last; the other hooks as cpu_runtime.
default_hooks.update(  # noqa: F405
    logger=dict(type='LoggerHook', interval=100),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor.update(window_size=100)  # noqa: F405
custom_hooks = [dict(type='SaveVisionEncoderHook', out_dir='vision_encoder')]
