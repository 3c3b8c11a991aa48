# The benchmarks of the paper as test sets: one dataset (map step only, deterministic wording) and
# one metric each. A test config appends its model's pipeline tail; the split is a dataset argument,
# so every split of a benchmark is one --cfg-options away (configs/pixellm/README.md lists them).
from mmengine.config import read_base

with read_base():
    from .pixellm_mix import data_root, muse_images, val_dataset

# MUSE: val (default), test_less or test_many via ann_file. Predictions are assigned to targets by
# the IoU-optimal matching and unmatched predictions count as wrong targets, as the official MUSE
# evaluation (train_ds.py ar_validate) scores them.
muse_test = dict(
    type='MUSEDataset', data_root=data_root, ann_file='muse/muse_val.json',
    data_prefix=muse_images, test_mode=True,
    pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='SampleQuestion'),
        dict(type='DecodeTargetMasks'),
        dict(type='BuildMuseConversation', deterministic=True),
    ])
muse_evaluator = dict(type='ReasonSegMetric', matching='hungarian', count_extra_preds=True)

# The single-target benchmarks are scored in answer order, as the official validate() does.
refer_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleReferPhrases'),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildReferConversation', deterministic=True),
]
refer_evaluator = dict(type='ReasonSegMetric')

# ReasonSeg: split val (default) or test; the first question of each image. It is the recipes'
# per-epoch validation set.
reason_seg_test = val_dataset

# refCOCO / refCOCO+ (val, testA, testB; splitBy unc) and refCOCOg (val, test; splitBy umd), one
# item per referring expression. split_by is left to the dataset so that changing dataset_name alone
# picks the right refs file.
refer_test = dict(
    type='ReferSegDataset', data_root=data_root, dataset_name='refcoco', split='val',
    test_mode=True, pipeline=refer_test_pipeline)

# gRefCOCO (val, testA, testB): one union mask per expression, an empty one for a no-target
# expression (the official form, on which gIoU/cIoU are defined).
grefcoco_test = dict(
    type='GRefCOCODataset', data_root=data_root, split='val', merge_targets=True, test_mode=True,
    pipeline=refer_test_pipeline)
