"""ReasonSegDataset: labelme json per image, target and ignore regions, splits, explanatory answers
at the official rate, question wording, errors, and the demo's tokenizing pipeline."""
import copy
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image
from refer_fixtures import box_mask, demo_pipeline, run

from pixellm.datasets import (BuildReferConversation, ChooseExplanatoryAnswer,
                              DatasetFormatError, ReasonSegDataset)
from pixellm.datasets.transforms import (DecodeTargetMasks, LoadImageFromFile,
                                        PackPixelLMInputs, SampleQuestion)
from pixellm.datasets.transforms.conversation import LONG_QUESTION_TEMPLATES
from pixellm.datasets.transforms.loading import decode_segmentation
from pixellm.datasets.transforms.refer_conversation import (EXPLANATORY_QUESTION_TEMPLATES,
                                                            ONE_TARGET_ANSWER_TEMPLATES)
from pixellm.registry import DATASETS
from pixellm.utils.constants import SEG_PLACEHOLDER

REASON = 'reason_seg/ReasonSeg'
EXPLANATION = 'A vase holds water, so it is the answer.'


def rect(x0, y0, x1, y1):
    """A labelme polygon of the rectangle with corners (x0, y0) and (x1, y1), inclusive."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def shape(label, points):
    return dict(label=label, points=points, group_id=None, shape_type='polygon', flags={})


def labelme(texts, is_sentence, shapes):
    return dict(text=texts, is_sentence=is_sentence, shapes=shapes, version='5.1.1')


# split -> name -> (height, width, labelme record, expected target, expected ignore or None)
FILES = {
    'train': {
        # A target with an ignore hole and a skipped "flag" shape.
        'a': (20, 30, labelme(['What can hold water?', 'Where would you put flowers?'], True,
                              [shape('target', rect(2, 3, 9, 7)), shape('ignore', rect(4, 4, 6, 6)),
                               shape('flag', rect(20, 0, 29, 19))]),
              box_mask(20, 30, 3, 8, 2, 10) & ~box_mask(20, 30, 4, 7, 4, 7),
              box_mask(20, 30, 4, 7, 4, 7)),
        # A small target inside a large ignore region: drawn after it, so it stays a target.
        'b': (16, 16, labelme(['Cup'], False, [shape('target', rect(2, 2, 4, 4)),
                                               shape('Ignore', rect(0, 0, 9, 9))]),
              box_mask(16, 16, 2, 5, 2, 5),
              box_mask(16, 16, 0, 10, 0, 10) & ~box_mask(16, 16, 2, 5, 2, 5)),
    },
    'val': {
        'c': (12, 12, labelme(['q one', 'q two'], False, [shape('target', rect(1, 1, 5, 5))]),
              box_mask(12, 12, 1, 6, 1, 6), None),
    },
}


def write_reason_seg(root, files=None, explanations=True):
    for split, records in (FILES if files is None else files).items():
        folder = osp.join(str(root), REASON, split)
        os.makedirs(folder, exist_ok=True)
        for name, (h, w, record, _, _) in records.items():
            Image.fromarray(np.full((h, w, 3), 120, dtype=np.uint8)).save(
                osp.join(folder, name + '.jpg'))
            if record is not None:
                with open(osp.join(folder, name + '.json'), 'w') as f:
                    json.dump(record, f)
    if explanations:
        os.makedirs(osp.join(str(root), REASON, 'explanatory'), exist_ok=True)
        with open(osp.join(str(root), REASON, 'explanatory', 'train.json'), 'w') as f:
            json.dump([dict(image='a.jpg', query='What can hold water?', outputs=EXPLANATION)], f)
    return str(root)


@pytest.fixture
def root(tmp_path):
    return write_reason_seg(tmp_path)


def reason_dataset(root, **kwargs):
    kwargs.setdefault('serialize_data', False)  # skips mmengine's slow gc.collect
    kwargs.setdefault('explanation_file', f'{REASON}/explanatory/train.json')
    return ReasonSegDataset(data_root=root, **kwargs)


def test_train_items_are_per_image_with_every_question(root):
    dataset = DATASETS.build(dict(type='ReasonSegDataset', data_root=root,
                                  explanation_file=f'{REASON}/explanatory/train.json'))
    assert len(dataset) == 2 and dataset.metainfo['dataset_name'] == 'ReasonSeg'
    a, b = dataset.get_data_info(0), dataset.get_data_info(1)
    assert a['img_path'] == osp.join(root, REASON, 'train', 'a.jpg')
    assert a['ann_file'] == osp.join(root, REASON, 'train', 'a.json')
    assert (a['img_id'], a['record_index'], a['height'], a['width']) == ('a', 0, 20, 30)
    assert a['questions'] == ['What can hold water?', 'Where would you put flowers?']
    assert a['is_sentence'] is True and b['is_sentence'] is False
    assert len(a['answers']) == 2 and all(len(t) == 1 for t in a['answers'])
    assert a['text_answers'] == [None, None]
    assert a['explanation'] == EXPLANATION and b['explanation'] is None
    assert 'question_index' not in a


@pytest.mark.parametrize('name, index', [('a', 0), ('b', 1)])
def test_target_and_ignore_regions_follow_the_official_rasterisation(root, name, index):
    h, w, _, target, ignore = FILES['train'][name]
    info = reason_dataset(root).get_data_info(index)
    out = run([LoadImageFromFile(), SampleQuestion(), DecodeTargetMasks()], info)
    assert out['gt_masks'].shape == (1, h, w)
    assert np.array_equal(out['gt_masks'][0], target)
    assert np.array_equal(decode_segmentation(info['ignore_segmentation'], h, w), ignore)
    assert (target.sum(), ignore.sum()) == ((31, 9) if name == 'a' else (9, 91))
    # The ignore region reaches the data sample for the metric (and never the target masks).
    assert np.array_equal(out['gt_ignore'], ignore)
    packed = PackPixelLMInputs(meta_keys=())(dict(out, img=np.zeros((h, w, 3), np.uint8)))
    assert torch.equal(packed['data_samples'].gt_ignore, torch.from_numpy(ignore))


def test_val_items_take_the_first_question_unless_all_are_asked_for(root):
    val = reason_dataset(root, split='val', test_mode=True)
    assert [val.get_data_info(i)['question_index'] for i in range(len(val))] == [0]
    assert val.get_data_info(0)['ignore_segmentation'] is None
    every = reason_dataset(root, split='val', test_mode=True, test_all_questions=True)
    assert [every.get_data_info(i)['question_index'] for i in range(len(every))] == [0, 1]


@pytest.mark.parametrize('split', ['train_val', ['train', 'val']])
def test_several_splits_are_read_together(root, split):
    dataset = reason_dataset(root, split=split)
    assert [dataset.get_data_info(i)['split'] for i in range(3)] == ['train', 'train', 'val']


def test_questions_use_long_or_short_templates_by_is_sentence(root):
    dataset = reason_dataset(root)
    steps = [SampleQuestion(), BuildReferConversation(deterministic=True)]
    a = run(steps, dict(dataset.get_data_info(0), question_index=1))
    assert a['conversation'][0]['content'] == \
        '<image>\n Where would you put flowers? Please output segmentation mask.'
    b = run(steps, dict(dataset.get_data_info(1), question_index=0))
    # As the official validation: a space after the newline, the phrase as written ('Cup').
    assert b['conversation'][0]['content'] == \
        '<image>\n What is Cup in this image? Please output segmentation mask.'
    assert a['answer'] == b['answer'] == '{seg}.'
    np.random.seed(0)
    questions = {run([SampleQuestion(), BuildReferConversation()],
                     dict(dataset.get_data_info(0), question_index=0))['conversation'][0]['content']
                 for _ in range(50)}
    assert questions == {'<image>\n' + t.format(sent='What can hold water?')
                         for t in LONG_QUESTION_TEMPLATES}


def test_explanatory_answers_are_mixed_at_the_official_rate(root):
    dataset = reason_dataset(root)
    a, b = dataset.get_data_info(0), dataset.get_data_info(1)
    choose = ChooseExplanatoryAnswer(explanatory=0.1)
    np.random.seed(0)
    draws = 4000
    modes = [choose(SampleQuestion()(copy.deepcopy(a)))['answer_mode'] for _ in range(draws)]
    rates = {m: modes.count(m) / draws for m in ('seg', 'seg_explain', 'explain')}
    assert abs(rates['explain'] - 0.1) < 0.02
    assert abs(rates['seg_explain'] - 0.45) < 0.03 and abs(rates['seg'] - 0.45) < 0.03
    # No explanation for the image, or explanations disabled: always the plain answer.
    assert {choose(SampleQuestion()(copy.deepcopy(b)))['answer_mode'] for _ in range(50)} == \
        {'seg'}
    off = ChooseExplanatoryAnswer(explanatory=-1)
    assert {off(SampleQuestion()(copy.deepcopy(a)))['answer_mode'] for _ in range(50)} == {'seg'}
    assert reason_dataset(root, explanation_file='').get_data_info(0)['explanation'] is None


def test_explanatory_modes_word_question_and_answer_as_officially(root):
    info = dict(reason_dataset(root).get_data_info(0), question_index=0)
    base = run([LoadImageFromFile(), SampleQuestion()], info)
    explain = run([DecodeTargetMasks(), BuildReferConversation()],
                  dict(copy.deepcopy(base), answer_mode='explain', targets=[]))
    assert explain['gt_masks'].shape == (0, 20, 30)
    assert explain['conversation'][0]['content'] == '<image>\nWhat can hold water?'
    assert explain['answer'] == EXPLANATION
    np.random.seed(0)
    seen = set()
    for _ in range(100):
        both = BuildReferConversation()(dict(copy.deepcopy(base), answer_mode='seg_explain'))
        seen.add(both['conversation'][0]['content'])
        assert both['answer'] in {f'{t.format(seg=SEG_PLACEHOLDER)} {EXPLANATION}'
                                  for t in ONE_TARGET_ANSWER_TEMPLATES}
    assert seen == {f'<image>\nWhat can hold water? {t}' for t in EXPLANATORY_QUESTION_TEMPLATES}


def test_choose_explanatory_answer_must_come_before_the_masks(root):
    info = run([SampleQuestion(), DecodeTargetMasks()], reason_dataset(root).get_data_info(0))
    with pytest.raises(RuntimeError, match='before DecodeTargetMasks'):
        ChooseExplanatoryAnswer()(info)


@pytest.mark.parametrize('explanatory, num_masks', [(1.0, 0), (-1, 1)])
def test_samples_go_through_the_demo_tokenizing_pipeline(root, explanatory, num_masks):
    pipeline = demo_pipeline(
        replace=dict(BuildMuseConversation=dict(type='BuildReferConversation')),
        insert_before=('DecodeTargetMasks',
                       dict(type='ChooseExplanatoryAnswer', explanatory=explanatory)))
    dataset = reason_dataset(root, pipeline=pipeline)
    sample = dataset[0]['data_samples']
    masks = sample.gt_instances.masks
    assert masks.shape == (num_masks, 20, 30) and sample.metainfo['num_targets'] == num_masks
    if num_masks:
        assert torch.equal(masks[0], torch.from_numpy(FILES['train']['a'][3]))
        assert sample.metainfo['answer'].count('[SEG0]') == 1
    else:
        assert sample.metainfo['answer'] == EXPLANATION
    assert sample.input_ids.dtype == torch.long and (sample.labels >= 0).any()


# ----------------------------------------------------------------------------- errors

def test_missing_split_folder_names_what_to_prepare(tmp_path):
    root = write_reason_seg(tmp_path, files={'train': FILES['train']})
    with pytest.raises(FileNotFoundError) as info:
        reason_dataset(root, split='val')
    message = str(info.value)
    assert 'ReasonSegDataset' in message and "'reason_seg/ReasonSeg/val'" in message
    assert 'docs/datasets.md' in message


def test_split_folder_without_images_is_reported(tmp_path):
    root = write_reason_seg(tmp_path, files={'train': FILES['train']})
    os.makedirs(osp.join(root, REASON, 'test'))
    with pytest.raises(FileNotFoundError, match=r"holds no \*\.jpg image.*docs/datasets\.md"):
        reason_dataset(root, split='test')


def test_image_without_its_json_is_reported(tmp_path):
    files = {'train': dict(FILES['train'], d=(8, 8, None, None, None))}
    root = write_reason_seg(tmp_path, files=files)
    with pytest.raises(FileNotFoundError, match=r"reason_seg/ReasonSeg/train/d\.json"):
        reason_dataset(root)


def test_missing_explanation_file_is_reported(root):
    with pytest.raises(FileNotFoundError, match='explanatory/val.json'):
        reason_dataset(root, explanation_file=f'{REASON}/explanatory/val.json')


def _bad(tmp_path, record):
    files = {'train': {'a': FILES['train']['a'], 'b': (16, 16, record, None, None)}}
    root = write_reason_seg(tmp_path, files=files)
    with pytest.raises(DatasetFormatError) as info:
        reason_dataset(root)
    err = info.value
    assert err.file == osp.join(root, REASON, 'train', 'b.json')
    assert err.record in ('record 1 (id=b)', "record 1 (id=b), question 0 'Cup'")
    return err


@pytest.mark.parametrize('record, field, words', [
    (labelme(['Cup'], False, []), 'shapes', 'empty annotation list'),
    (labelme(['Cup'], False, [shape('ignore', rect(0, 0, 3, 3)), shape('flag', rect(1, 1, 2, 2))]),
     'shapes', 'no target region'),
    (labelme(['Cup'], False, [shape('target', [[1, 1], [2]])]), 'shapes[0].points', '[x, y]'),
    (labelme([], False, [shape('target', rect(0, 0, 3, 3))]), 'text', 'non-empty list'),
    (labelme(['Cup'], 'no', [shape('target', rect(0, 0, 3, 3))]), 'is_sentence', 'true or false'),
    ({'text': ['Cup'], 'shapes': []}, 'is_sentence', 'missing'),
])
def test_bad_labelme_records_name_the_file_record_and_field(tmp_path, record, field, words):
    err = _bad(tmp_path, record)
    assert err.field == field and words in str(err)


def test_bad_explanation_entry_is_reported(root):
    path = osp.join(root, REASON, 'explanatory', 'train.json')
    with open(path, 'w') as f:
        json.dump([dict(image='a.jpg', query='q')], f)
    with pytest.raises(DatasetFormatError) as info:
        reason_dataset(root)
    assert (info.value.file, info.value.record, info.value.field) == (path, 'record 0', 'outputs')


def test_labelme_json_in_cp1252_is_read_as_officially(tmp_path):
    root = write_reason_seg(tmp_path, files={'train': {'a': FILES['train']['a']}},
                            explanations=False)
    record = labelme(['Which caf\u00e9 sign is lit?'], True, [shape('target', rect(1, 1, 3, 3))])
    with open(osp.join(root, REASON, 'train', 'a.json'), 'wb') as f:
        f.write(json.dumps(record, ensure_ascii=False).encode('cp1252'))
    assert reason_dataset(root, explanation_file='').get_data_info(0)['questions'] == \
        ['Which caf\u00e9 sign is lit?']
