# The seed recipe's training data (official --dataset "sem_seg||refer_seg||vqa||multi_reason_seg"
# --sample_rates "2,9,2,4") and its per-epoch validation set (the official default --val_dataset
# "ReasonSeg|val"). Each source's pipeline here is its map step, raw record -> neutral conversation
# with target masks; the recipe appends the model's tail (codebook tokens, chat template, resize,
# packing), so one dataset config serves every LLM. Layout under data_root: docs/datasets.md.
data_root = 'dataset/'           # --dataset_dir './dataset'
sample_rates = (2, 9, 2, 4)      # --sample_rates, one per group in group order
num_classes_per_question = 3     # --num_classes_per_question (official default 1)
num_classes_per_sample = 3       # --num_classes_per_sample (default)
use_expand_question_list = True  # --use_expand_question_list

# sem_seg (--sem_seg_data "ade20k||cocostuff||pascal_part||paco_lvis||mapillary"): the classes
# present in an image asked as referring phrases.
sem_seg_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleSemSegTargets', num_classes_per_question=num_classes_per_question,
         num_classes_per_sample=num_classes_per_sample),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildReferConversation', use_expand_question_list=use_expand_question_list),
]
# refer_seg (--refer_seg_data "refclef||refcoco||refcoco+||refcocog"), train splits; splitBy umd for
# refcocog and unc otherwise, as the datasets derive it.
refer_seg_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleReferPhrases', num_classes_per_question=num_classes_per_question,
         num_classes_per_sample=num_classes_per_sample),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildReferConversation', use_expand_question_list=use_expand_question_list),
]
# vqa (--vqa_data llava_instruct_150k): conversations without a target.
vqa_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='BuildVQAConversation'),
    dict(type='DecodeTargetMasks'),
]
# multi_reason_seg: MUSE train only. The official MultiReasonSegDataset reads muse_train.json and
# nothing else (it is handed --reason_seg_data but only splits it); ReasonSeg is not in this mix.
# MUSE images: COCO train2014 for records with a file_name, COCO 2017 for those with a coco_url.
muse_images = dict(img_path='refer_seg/images/mscoco/images/train2014',
                   train2017_img_path='refer_seg/images/mscoco/images/train2017',
                   val2017_img_path='refer_seg/images/mscoco/images/val2017')
muse_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='SampleQuestion'),
    dict(type='DecodeTargetMasks'),
    dict(type='BuildMuseConversation', use_expand_question_list=use_expand_question_list),
]

train_groups = dict(
    sem_seg=[
        dict(type='ADE20KSemSegDataset', data_root=data_root, pipeline=sem_seg_pipeline),
        dict(type='COCOStuffSemSegDataset', data_root=data_root, pipeline=sem_seg_pipeline),
        # The official loader skips part annotations that give no usable mask (degenerate
        # polygons); here they are dropped at load and counted in the log.
        dict(type='PascalPartSemSegDataset', data_root=data_root, pipeline=sem_seg_pipeline,
             skip_invalid_targets=True),
        dict(type='PACOLVISSemSegDataset', data_root=data_root, pipeline=sem_seg_pipeline,
             skip_invalid_targets=True),
        dict(type='MapillarySemSegDataset', data_root=data_root, pipeline=sem_seg_pipeline),
    ],
    refer_seg=[
        dict(type='ReferSegDataset', data_root=data_root, dataset_name=name, split='train',
             pipeline=refer_seg_pipeline)
        for name in ('refclef', 'refcoco', 'refcoco+', 'refcocog')
    ],
    vqa=[
        dict(type='LLaVAInstructDataset', data_root=data_root,
             ann_file='llava_dataset/llava_instruct_150k.json', pipeline=vqa_pipeline)
    ],
    multi_reason_seg=[
        dict(type='MUSEDataset', data_root=data_root, ann_file='muse/muse_train.json',
             data_prefix=muse_images, pipeline=muse_pipeline)
    ],
)

# Validation after every epoch on ReasonSeg val, first question of each image, worded as the
# official validation does.
val_dataset = dict(
    type='ReasonSegDataset', data_root=data_root, split='val', test_mode=True,
    pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='SampleQuestion'),
        dict(type='DecodeTargetMasks'),
        dict(type='BuildReferConversation', deterministic=True),
    ])
val_evaluator = dict(type='ReasonSegMetric')
