# LISA's training data (train_ds.py defaults: --dataset "sem_seg||refer_seg||vqa||reason_seg",
# --sample_rates "9,3,3,1") and its per-epoch validation set (--val_dataset "ReasonSeg|val").
# sem_seg, refer_seg and vqa are the sources of PixelLM's mix (_base_/datasets/pixellm_mix.py,
# same --sem_seg_data, --refer_seg_data, --vqa_data) asked as LISA asks: one class per question
# (LISA has no --num_classes_per_question), no expanded question list; reason_seg is ReasonSeg
# train with its explanations (--reason_seg_data "ReasonSeg|train", --explanatory 0.1).
from mmengine.config import read_base

with read_base():
    from .pixellm_mix import (data_root, refer_seg_pipeline, sem_seg_pipeline, train_groups,
                              val_dataset, val_evaluator, vqa_pipeline)

sample_rates = (9, 3, 3, 1)      # --sample_rates, one per group in group order
num_classes_per_sample = 3       # --num_classes_per_sample
explanatory = 0.1                # --explanatory


def _lisa_steps(pipeline):
    """PixelLM's source pipeline with LISA's question settings."""
    steps = []
    for step in pipeline:
        step = dict(step)
        if step['type'] in ('SampleSemSegTargets', 'SampleReferPhrases'):
            step.update(num_classes_per_question=1, num_classes_per_sample=num_classes_per_sample)
        if step['type'] == 'BuildReferConversation':
            step.update(use_expand_question_list=False)
        steps.append(step)
    return steps


reason_seg_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleQuestion'),
    dict(type='ChooseExplanatoryAnswer', explanatory=explanatory),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildReferConversation', use_expand_question_list=False),
]
train_groups = dict(
    sem_seg=[dict(s, pipeline=_lisa_steps(s['pipeline'])) for s in train_groups['sem_seg']],
    refer_seg=[dict(s, pipeline=_lisa_steps(s['pipeline'])) for s in train_groups['refer_seg']],
    vqa=train_groups['vqa'],
    reason_seg=[
        dict(type='ReasonSegDataset', data_root=data_root, split='train',
             explanation_file='reason_seg/ReasonSeg/explanatory/train.json',
             pipeline=reason_seg_pipeline)
    ],
)
del _lisa_steps
