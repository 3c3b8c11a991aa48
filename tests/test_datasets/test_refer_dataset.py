"""ReferSegDataset: REFER refs pickle + instances.json, train/test items, masks, question and answer
text, the official phrase sampling, errors, and the demo's tokenizing pipeline."""
import copy
import json
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from refer_fixtures import (ANN_MASKS, COCO_DIR, IMAGES, annotations, demo_pipeline, instances,
                            run, sentences, write_refer)

from pixellm.datasets import (BuildReferConversation, DatasetFormatError, InvalidTargetError,
                              ReferSegDataset, SampleReferPhrases)
from pixellm.datasets.transforms import DecodeTargetMasks, ExpandSegTokens, LoadImageFromFile
from pixellm.datasets.transforms.refer_conversation import (ONE_TARGET_ANSWER_TEMPLATES,
                                                            PHRASE_ANSWER_TEMPLATES,
                                                            REFER_MULTI_ANSWER_TEMPLATES,
                                                            SHORT_QUESTION_TEMPLATES)
from pixellm.registry import DATASETS
from pixellm.structures import PixelLMDataSample
from pixellm.utils.constants import SEG_PLACEHOLDER


def refcoco_refs():
    """Refs of the fixture: image 1 has two train refs, image 2 one per other split."""
    return [
        dict(ref_id=100, ann_id=11, image_id=1, category_id=1, split='train',
             sentences=sentences('man on left', 'Left guy ', start=0)),
        dict(ref_id=101, ann_id=12, image_id=1, category_id=3, split='train',
             sentences=sentences('Red Car', start=2)),
        dict(ref_id=102, ann_id=13, image_id=2, category_id=18, split='train',
             sentences=sentences('dog', 'brown dog', start=3)),
        dict(ref_id=103, ann_id=14, image_id=2, category_id=1, split='val',
             sentences=sentences('person at bottom', start=5)),
        dict(ref_id=104, ann_id=13, image_id=2, category_id=18, split='testA',
             sentences=sentences('the dog', start=6)),
        dict(ref_id=105, ann_id=14, image_id=2, category_id=1, split='testB',
             sentences=sentences('small person', start=7)),
    ]


# The sentences of image 1 and the object each refers to.
PHRASE_ANN = {'man on left': 11, 'Left guy': 11, 'Red Car': 12}


@pytest.fixture
def root(tmp_path):
    return write_refer(tmp_path, refcoco_refs())


def refer_dataset(root, **kwargs):
    # Unserialised: mmengine's serialisation runs gc.collect, 0.3 s per dataset in this process.
    kwargs.setdefault('serialize_data', False)
    return ReferSegDataset(data_root=root, **kwargs)


def test_train_mode_gives_one_item_per_image_with_every_sentence(root):
    dataset = DATASETS.build(dict(type='ReferSegDataset', data_root=root))
    assert len(dataset) == 2 and dataset.metainfo['dataset_name'] == 'refcoco'
    info = dataset.get_data_info(0)
    assert info['img_path'] == osp.join(root, COCO_DIR, IMAGES[1][0])
    assert (info['img_id'], info['record_index'], info['height'], info['width']) == (1, 0, 20, 30)
    assert info['ann_file'] == osp.join(root, 'refer_seg', 'refcoco', 'instances.json')
    assert info['refs_file'] == osp.join(root, 'refer_seg', 'refcoco', 'refs(unc).p')
    assert info['questions'] == ['man on left', 'Left guy', 'Red Car']
    assert [[t['id'] for t in a] for a in info['answers']] == [[11], [11], [12]]
    assert info['answers'][2][0]['category_name'] == 'car'
    assert info['text_answers'] == [None] * 3
    assert (info['ref_ids'], info['sent_ids']) == ([100, 100, 101], [0, 1, 2])
    assert info['no_target'] == [False] * 3 and info['is_sentence'] is False
    assert 'question_index' not in info


@pytest.mark.parametrize('split, expected', [
    ('train', [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]),
    ('val', [(2, 0)]), ('testA', [(2, 0)]), ('testB', [(2, 0)]), ('test', [(2, 0), (2, 1)]),
])
def test_test_mode_gives_one_item_per_sentence_of_the_split(root, split, expected):
    dataset = refer_dataset(root, split=split, test_mode=True)
    items = [dataset.get_data_info(i) for i in range(len(dataset))]
    assert [(it['img_id'], it['question_index']) for it in items] == expected


def test_test_a_includes_refs_of_split_test_ab(tmp_path):
    refs = refcoco_refs()
    refs[4]['split'] = 'testAB'
    root = write_refer(tmp_path, refs)
    assert len(refer_dataset(root, split='testA', test_mode=True)) == 1
    assert len(refer_dataset(root, split='testB', test_mode=True)) == 2


def test_default_paths_follow_the_official_layout(tmp_path):
    root = write_refer(tmp_path, refcoco_refs(), dataset='refcocog', refs_name='refs(umd).p')
    dataset = refer_dataset(root, dataset_name='refcocog')
    assert dataset.split_by == 'umd'
    assert dataset.ann_file.endswith(osp.join('refer_seg', 'refcocog', 'refs(umd).p'))
    saiapr = 'refer_seg/images/saiapr_tc-12'
    root = write_refer(tmp_path / 'clef', refcoco_refs(), dataset='refclef', image_dir=saiapr)
    clef = refer_dataset(root, dataset_name='refclef')
    assert clef.get_data_info(0)['img_path'] == osp.join(root, saiapr, IMAGES[1][0])
    assert len(run([LoadImageFromFile()], clef.get_data_info(0))['img']) == 20


def test_masks_decode_to_the_annotated_regions(root):
    dataset = refer_dataset(root, test_mode=True)
    pipeline = [LoadImageFromFile(), SampleReferPhrases(), DecodeTargetMasks()]
    for index, ann_id, pixels in [(0, 11, 40), (2, 12, 30), (3, 13, 32)]:
        out = run(pipeline, dataset.get_data_info(index))
        assert out['gt_masks'].shape == (1, *ANN_MASKS[ann_id].shape)
        assert out['gt_masks'][0].sum() == pixels
        assert np.array_equal(out['gt_masks'][0], ANN_MASKS[ann_id])


def test_test_pipeline_words_question_and_answer_as_the_official_validation(root):
    dataset = refer_dataset(root, test_mode=True)
    out = run([SampleReferPhrases(), BuildReferConversation(deterministic=True),
               ExpandSegTokens(dict(type='TextProcessor'))], dataset.get_data_info(2))
    # The official validation lowercases the sentence ('Red Car' in the refs file).
    assert out['phrases'] == ['red car'] and out['num_targets'] == 1
    assert out['conversation'][0]['content'] == \
        '<image>\n What is red car in this image? Please output segmentation mask.'
    assert out['answer'] == '[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].'


def many_phrases_info(root, num):
    """Image 1's data info with ``num`` made-up sentences, one target each."""
    info = refer_dataset(root).get_data_info(0)
    return dict(info, questions=[f'Thing {k}' for k in range(num)],
                answers=[[dict(id=k)] for k in range(num)], text_answers=[None] * num)


def test_sampled_phrases_follow_the_official_allocation(root):
    info = many_phrases_info(root, 9)
    np.random.seed(0)
    # 9 sentences, 3 questions of at most 3: every question holds exactly 3.
    draws = [SampleReferPhrases(3, 3)(copy.deepcopy(info)) for _ in range(30)]
    assert {len(d['phrases']) for d in draws} == {3}
    for d in draws:
        assert [t['id'] for t in d['targets']] == [int(p.split()[1]) for p in d['phrases']]
        assert d['question'] == f'{d["phrases"][0]}, {d["phrases"][1]} and {d["phrases"][2]}'
        assert d['question_index'] == d['question_indices'][0] and d['num_targets'] == 3
    # 5 sentences over 3 questions: (3, 1, 1) or (2, 2, 1); a random question has 5/3 on average.
    five = many_phrases_info(root, 5)
    sizes = [len(SampleReferPhrases(3, 3)(copy.deepcopy(five))['phrases']) for _ in range(3000)]
    assert set(sizes) == {1, 2, 3}
    assert abs(np.mean(sizes) - 5 / 3) < 0.05
    # Image 1's 3 sentences make 3 one-phrase questions; one phrase per question when asked so.
    real = refer_dataset(root).get_data_info(0)
    assert {len(SampleReferPhrases(3, 3)(copy.deepcopy(real))['phrases']) for _ in range(20)} \
        == {1}
    assert {len(SampleReferPhrases(1, 3)(copy.deepcopy(info))['phrases']) for _ in range(20)} \
        == {1}


def test_training_questions_and_answers_take_the_official_forms(root):
    info = many_phrases_info(root, 5)
    np.random.seed(1)
    build = BuildReferConversation()
    one_forms = {t.format(seg=SEG_PLACEHOLDER) for t in ONE_TARGET_ANSWER_TEMPLATES}
    one_phrase_questions, counts = set(), dict(one=0, separate=0, multi=0)
    for _ in range(400):
        out = build(SampleReferPhrases(3, 3)(copy.deepcopy(info)))
        answer, n, phrases = out['answer'], out['num_targets'], out['phrases']
        assert answer.count(SEG_PLACEHOLDER) == n == len(phrases)
        question = out['conversation'][0]['content']
        joined = ', '.join(p.lower() for p in phrases[:-1]) + ' and ' + phrases[-1].lower() \
            if n > 1 else phrases[0].lower()
        assert question.startswith('<image>\n') and joined in question
        if n == 1:
            assert answer in one_forms
            one_phrase_questions.add(question.replace(joined, '{class_name}'))
            counts['one'] += 1
            continue
        segs = ', '.join([SEG_PLACEHOLDER] * (n - 1)) + ' and ' + SEG_PLACEHOLDER
        multi_forms = {t.format(class_name=joined, seg=segs) for t in REFER_MULTI_ANSWER_TEMPLATES}
        separate_forms = {
            ', '.join(t.format(class_name=p, seg=SEG_PLACEHOLDER)[:-1] for p in phrases[:-1])
            + ' and ' + t.format(class_name=phrases[-1], seg=SEG_PLACEHOLDER)
            for t in PHRASE_ANSWER_TEMPLATES
        }
        assert answer in multi_forms | separate_forms
        counts['separate'] += answer in separate_forms - multi_forms
        counts['multi'] += answer in multi_forms - separate_forms
    assert min(counts.values()) > 30
    # Every official short template is used, with the phrase lowercased.
    assert one_phrase_questions == {'<image>\n' + t for t in SHORT_QUESTION_TEMPLATES}


def test_sample_question_also_works_with_one_phrase_per_question(root):
    info = refer_dataset(root).get_data_info(1)
    pipeline = demo_pipeline(replace=dict(BuildMuseConversation=dict(
        type='BuildReferConversation', use_expand_question_list=True)))
    dataset = refer_dataset(root, pipeline=pipeline)
    out = dataset[1]
    assert out['data_samples'].metainfo['question'] in info['questions']
    assert out['data_samples'].gt_instances.masks.shape == (1, 16, 16)


def test_one_sample_goes_through_the_demo_tokenizing_pipeline(root):
    pipeline = demo_pipeline(replace=dict(
        # One question per image, so all three sentences of image 1 go into it.
        SampleQuestion=dict(type='SampleReferPhrases', num_classes_per_question=3,
                            num_classes_per_sample=1),
        BuildMuseConversation=dict(type='BuildReferConversation')))
    dataset = refer_dataset(root, pipeline=pipeline)
    np.random.seed(2)
    out = dataset[0]
    sample = out['data_samples']
    assert isinstance(sample, PixelLMDataSample) and out['inputs'].dtype == torch.uint8
    masks = sample.gt_instances.masks
    n = sample.metainfo['num_targets']
    assert masks.shape == (n, 20, 30) and n == 3
    assert sample.metainfo['answer'].count('[SEG0]') == n
    assert sample.input_ids.dtype == torch.long and sample.labels.shape == sample.input_ids.shape
    # The masks follow the phrases' order in the question.
    question = sample.metainfo['question']
    found = sorted((question.find(p), ann_id) for p, ann_id in PHRASE_ANN.items() if p in question)
    assert len(found) == n
    for k, (_, ann_id) in enumerate(found):
        assert torch.equal(masks[k], torch.from_numpy(ANN_MASKS[ann_id]))


def test_empty_segmentation_is_an_invalid_target_and_degenerate_polygons_are_dropped(tmp_path):
    root = write_refer(tmp_path, refcoco_refs())
    path = osp.join(root, 'refer_seg', 'refcoco', 'instances.json')
    with open(path) as f:
        inst = json.load(f)
    inst['annotations'][0]['segmentation'] = []
    inst['annotations'][2]['segmentation'].append([0, 0, 3, 3])
    with open(path, 'w') as f:
        json.dump(inst, f)
    with pytest.raises(InvalidTargetError, match=r'annotations\[0\] \(id=11\), a target of refs'
                       r'\[0\] \(ref_id=100\) .*field .segmentation.: empty: no polygon'):
        refer_dataset(root, test_mode=True)
    dataset = refer_dataset(root, test_mode=True, skip_invalid_targets=True)
    assert 11 not in {t['id'] for i in range(len(dataset))
                      for t in dataset.get_data_info(i)['answers'][0]}
    pipeline = [SampleReferPhrases(), DecodeTargetMasks()]
    info = next(dataset.get_data_info(i) for i in range(len(dataset))
                if dataset.get_data_info(i)['answers'][0][0]['id'] == 13)
    assert np.array_equal(run(pipeline, info)['gt_masks'][0], ANN_MASKS[13])


# ----------------------------------------------------------------------------- errors

def test_missing_refs_file_names_the_path_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        ReferSegDataset(dataset_name='refcoco+', data_root=str(tmp_path))
    message = str(info.value)
    assert 'ReferSegDataset' in message and "refer_seg/refcoco+/refs(unc).p" in message
    assert 'docs/datasets.md' in message


def test_missing_instances_file_names_it(tmp_path):
    root = write_refer(tmp_path, refcoco_refs())
    os.remove(osp.join(root, 'refer_seg', 'refcoco', 'instances.json'))
    with pytest.raises(FileNotFoundError, match=r"refer_seg/refcoco/instances\.json"):
        refer_dataset(root)


def _error(tmp_path, refs=None, inst=None, **kwargs):
    root = write_refer(tmp_path, refs if refs is not None else refcoco_refs(), inst=inst)
    with pytest.raises(DatasetFormatError) as info:
        refer_dataset(root, **kwargs)
    return info.value


def test_unknown_ann_id_names_the_refs_file_ref_and_field(tmp_path):
    refs = refcoco_refs()
    refs[1]['ann_id'] = 99
    err = _error(tmp_path, refs)
    assert err.file.endswith('refs(unc).p') and err.record == 'refs[1] (ref_id=101)'
    assert err.field == 'ann_id' and 'unknown annotation id 99' in str(err)


def test_unknown_category_ids_are_reported(tmp_path):
    refs = refcoco_refs()
    refs[0]['category_id'] = 77
    err = _error(tmp_path, refs)
    assert (err.record, err.field) == ('refs[0] (ref_id=100)', 'category_id')
    anns = annotations()
    anns[1]['category_id'] = 42
    err = _error(tmp_path / 'b', inst=instances(anns))
    assert err.file.endswith('instances.json')
    assert (err.record, err.field) == ('annotations[1] (id=12)', 'category_id')
    assert 'unknown category id 42' in str(err)


def test_empty_annotation_list_is_reported(tmp_path):
    err = _error(tmp_path, inst=instances(anns=[]))
    assert err.file.endswith('instances.json') and err.field == 'annotations'
    assert 'empty list' in str(err)


def test_ref_without_sentences_and_split_without_refs_are_reported(tmp_path):
    refs = refcoco_refs()
    refs[2]['sentences'] = []
    err = _error(tmp_path, refs)
    assert (err.record, err.field) == ('refs[2] (ref_id=102)', 'sentences')
    err = _error(tmp_path / 'b', split='testC')
    assert err.field == 'split' and "['testA', 'testB', 'train', 'val']" in str(err)
    refs = refcoco_refs()
    refs[1]['sentences'][0]['sent'] = None
    err = _error(tmp_path / 'c', refs)
    assert (err.record, err.field) == ('refs[1] (ref_id=101)', 'sentences[0].sent')


def test_empty_sentences_are_left_out(tmp_path):
    refs = refcoco_refs()
    refs[0]['sentences'][1]['sent'] = '  '
    refs[1]['sentences'][0]['sent'] = ''
    info = refer_dataset(write_refer(tmp_path, refs)).get_data_info(0)
    assert info['questions'] == ['man on left'] and info['sent_ids'] == [0]


def test_bad_segmentation_and_annotation_of_another_image_are_reported(tmp_path):
    anns = annotations()
    anns[1]['segmentation']['size'] = [5, 5]
    err = _error(tmp_path, inst=instances(anns))
    assert err.record.startswith('annotations[1] (id=12), a target of refs[')
    assert err.field == 'segmentation'
    anns = annotations()
    anns[0]['image_id'] = 2
    err = _error(tmp_path / 'b', inst=instances(anns))
    assert err.field == 'image_id' and 'of image 2' in str(err)


def test_unreadable_refs_pickle_is_reported(tmp_path):
    root = write_refer(tmp_path, refcoco_refs())
    with open(osp.join(root, 'refer_seg', 'refcoco', 'refs(unc).p'), 'wb') as f:
        f.write(pickle.dumps({'not': 'a list'}))
    with pytest.raises(DatasetFormatError, match='list of refs'):
        refer_dataset(root)


def test_missing_image_is_reported_by_load_image_with_the_record(tmp_path):
    root = write_refer(tmp_path, refcoco_refs(), skip_images=(2, ))
    dataset = refer_dataset(root, pipeline=[dict(type='LoadImageFromFile')])
    with pytest.raises(FileNotFoundError) as info:
        dataset[1]
    message = str(info.value)
    assert IMAGES[2][0] in message and 'record 1 (id=2)' in message
    assert 'instances.json' in message


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="refcocog"):
        ReferSegDataset(dataset_name='refcocoz')
