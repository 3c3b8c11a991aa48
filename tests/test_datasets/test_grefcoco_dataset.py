"""GRefCOCODataset: grefs(unc).json, multi-target and no-target expressions (one target per object
or the official union), answers, errors, and the demo's tokenizing pipeline."""
import copy

import numpy as np
import pytest
import torch
from refer_fixtures import ANN_MASKS, demo_pipeline, instances, run, sentences, write_refer

from pixellm.datasets import (BuildReferConversation, DatasetFormatError, GRefCOCODataset,
                              SampleReferPhrases)
from pixellm.datasets.transforms import DecodeTargetMasks, ExpandSegTokens
from pixellm.datasets.transforms.refer_conversation import (NO_TARGET_ANSWER,
                                                            ONE_TARGET_ANSWER_TEMPLATES,
                                                            REFER_MULTI_ANSWER_TEMPLATES)
from pixellm.registry import DATASETS
from pixellm.utils.constants import SEG_PLACEHOLDER


def grefs():
    """gRefCOCO refs: a two-object and a no-target expression on image 1, others on image 2."""
    return [
        dict(ref_id=0, ann_id=[11, 12], category_id=[1, 3], image_id=1, split='train',
             no_target=False, sentences=sentences('person and car', start=0)),
        dict(ref_id=1, ann_id=[-1], category_id=[], image_id=1, split='train', no_target=True,
             sentences=sentences('flying pig', start=1)),
        dict(ref_id=2, ann_id=[13], category_id=[18], image_id=2, split='val', no_target=False,
             sentences=sentences('dog', start=2)),
        dict(ref_id=3, ann_id=14, category_id=1, image_id=2, split='testA',
             sentences=sentences('small person', start=3)),
        dict(ref_id=4, ann_id=[13, 14], category_id=[18, 1], image_id=2, split='testB',
             no_target=False, sentences=sentences('everything', start=4)),
    ]


def non_crowd_instances():
    """The fixture's instances with no crowd annotation: gRefCOCO leaves crowd objects out."""
    inst = instances()
    for ann in inst['annotations']:
        ann['iscrowd'] = 0
    return inst


@pytest.fixture
def root(tmp_path):
    return write_refer(tmp_path, grefs(), dataset='grefcoco', refs_name='grefs(unc).json',
                       inst=non_crowd_instances())


def gref_dataset(root, **kwargs):
    kwargs.setdefault('serialize_data', False)  # skips mmengine's slow gc.collect
    return GRefCOCODataset(data_root=root, **kwargs)


TEST_STEPS = [SampleReferPhrases(), DecodeTargetMasks(), BuildReferConversation(deterministic=True)]


def test_items_hold_every_object_of_an_expression_and_none_for_no_target(root):
    dataset = DATASETS.build(dict(type='GRefCOCODataset', data_root=root))
    assert len(dataset) == 1 and dataset.metainfo['dataset_name'] == 'grefcoco'
    info = dataset.get_data_info(0)
    assert info['questions'] == ['person and car', 'flying pig']
    assert [[t['id'] for t in a] for a in info['answers']] == [[11, 12], []]
    assert info['no_target'] == [False, True]
    assert info['refs_file'].endswith('refer_seg/grefcoco/grefs(unc).json')
    assert info['img_path'].endswith('refer_seg/images/mscoco/images/train2014/'
                                     'COCO_train2014_000000000001.jpg')


@pytest.mark.parametrize('split, expected', [('train', 2), ('val', 1), ('testA', 1),
                                             ('testB', 1)])
def test_splits_are_matched_exactly_one_item_per_sentence_in_test_mode(root, split, expected):
    assert len(gref_dataset(root, split=split, test_mode=True)) == expected


def test_multi_target_expression_gives_one_mask_per_object(root):
    out = run(TEST_STEPS + [ExpandSegTokens(dict(type='TextProcessor'))],
              gref_dataset(root, test_mode=True).get_data_info(0))
    assert out['gt_masks'].shape == (2, 20, 30)
    assert np.array_equal(out['gt_masks'][0], ANN_MASKS[11])
    assert np.array_equal(out['gt_masks'][1], ANN_MASKS[12])
    assert out['conversation'][0]['content'] == \
        '<image>\n What is person and car in this image? Please output segmentation mask.'
    tokens = '[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]'
    assert out['answer'] == f'{tokens} and {tokens}.'


def test_no_target_expression_gives_zero_targets_and_the_no_target_answer(root):
    out = run(TEST_STEPS + [ExpandSegTokens(dict(type='TextProcessor'))],
              gref_dataset(root, test_mode=True).get_data_info(1))
    assert out['num_targets'] == 0 and out['gt_masks'].shape == (0, 20, 30)
    assert out['answer'] == NO_TARGET_ANSWER == 'Sorry, there is no such object in this image.'
    np.random.seed(0)
    train = run([SampleReferPhrases(), BuildReferConversation()],
                dict(gref_dataset(root).get_data_info(0), question_index=1))
    assert train['answer'] == NO_TARGET_ANSWER


def test_training_answer_of_a_multi_target_expression_names_the_phrase(root):
    info = dict(gref_dataset(root).get_data_info(0), question_index=0)
    segs = f'{SEG_PLACEHOLDER} and {SEG_PLACEHOLDER}'
    forms = {t.format(class_name='person and car', seg=segs) for t in REFER_MULTI_ANSWER_TEMPLATES}
    np.random.seed(0)
    answers = {run([SampleReferPhrases(), BuildReferConversation()], copy.deepcopy(info))['answer']
               for _ in range(200)}
    assert answers == forms


def test_mixed_phrases_get_one_clause_each(root):
    info = gref_dataset(root).get_data_info(0)
    np.random.seed(3)
    seen = set()
    for _ in range(100):
        out = run([SampleReferPhrases(2, 1), BuildReferConversation()], copy.deepcopy(info))
        if len(out['phrases']) == 2:
            seen.add(out['answer'])
            assert out['num_targets'] == 2 and out['answer'].count(SEG_PLACEHOLDER) == 2
    assert seen == {'person and car are {seg} and {seg} and flying pig is not in this image.',
                    'flying pig is not in this image and person and car are {seg} and {seg}.'}


def test_merge_targets_gives_the_official_union_and_an_empty_mask(root):
    dataset = gref_dataset(root, test_mode=True, merge_targets=True)
    multi = run(TEST_STEPS, dataset.get_data_info(0))
    assert multi['gt_masks'].shape == (1, 20, 30)
    union = ANN_MASKS[11] | ANN_MASKS[12]
    assert np.array_equal(multi['gt_masks'][0], union) and union.sum() == 70
    assert multi['answer'] == '{seg}.'
    empty = run(TEST_STEPS, dataset.get_data_info(1))
    assert empty['gt_masks'].shape == (1, 20, 30) and not empty['gt_masks'].any()
    assert empty['answer'] == '{seg}.'
    np.random.seed(0)
    train = run([SampleReferPhrases(), BuildReferConversation()],
                dict(gref_dataset(root, merge_targets=True).get_data_info(0), question_index=1))
    assert train['answer'] in {t.format(seg=SEG_PLACEHOLDER) for t in ONE_TARGET_ANSWER_TEMPLATES}


@pytest.mark.parametrize('merge', [False, True])
def test_a_no_target_sample_goes_through_the_demo_tokenizing_pipeline(root, merge):
    pipeline = demo_pipeline('test_pipeline', replace=dict(
        BuildMuseConversation=dict(type='BuildReferConversation', deterministic=True)))
    dataset = gref_dataset(root, test_mode=True, merge_targets=merge, pipeline=pipeline)
    sample = dataset[1]['data_samples']
    assert sample.gt_instances.masks.shape == ((1, 20, 30) if merge else (0, 20, 30))
    assert sample.metainfo['num_targets'] == int(merge)
    assert ('[SEG0]' in sample.metainfo['answer']) == merge
    assert sample.input_ids.dtype == torch.long and sample.prompt_ids.numel() > 0
    multi = dataset[0]['data_samples']
    assert multi.gt_instances.masks.shape[0] == (1 if merge else 2)


# ----------------------------------------------------------------------------- errors

def _error(tmp_path, mutate):
    refs = grefs()
    mutate(refs)
    root = write_refer(tmp_path, refs, dataset='grefcoco', refs_name='grefs(unc).json')
    with pytest.raises(DatasetFormatError) as info:
        GRefCOCODataset(data_root=root)
    return info.value


@pytest.mark.parametrize('ref, change, field, words', [
    (0, dict(ann_id=[]), 'ann_id', 'empty annotation list'),
    (0, dict(ann_id=[11, -1]), 'ann_id', 'mixed with object ids'),
    (1, dict(no_target=False), 'no_target', 'is False but ann_id is [-1]'),
    (0, dict(no_target=True), 'no_target', 'is True but ann_id is [11, 12]'),
    (0, dict(ann_id=[11, 99]), 'ann_id', 'unknown annotation id 99'),
    (0, dict(ann_id=['11']), 'ann_id', 'list of integer'),
])
def test_bad_refs_name_the_file_ref_and_field(tmp_path, ref, change, field, words):
    refs = grefs()
    refs[ref].update(change)
    root = write_refer(tmp_path, refs, dataset='grefcoco', refs_name='grefs(unc).json')
    with pytest.raises(DatasetFormatError) as info:
        GRefCOCODataset(data_root=root)
    err = info.value
    assert err.file.endswith('grefs(unc).json') and err.record == f'refs[{ref}] (ref_id={ref})'
    assert err.field == field and words in str(err)


def test_missing_grefs_file_names_the_path_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        GRefCOCODataset(data_root=str(tmp_path))
    assert 'refer_seg/grefcoco/grefs(unc).json' in str(info.value)
    assert 'GRefCOCODataset' in str(info.value) and 'docs/datasets.md' in str(info.value)


def test_malformed_grefs_json_reports_line_and_column(tmp_path):
    root = write_refer(tmp_path, grefs(), dataset='grefcoco', refs_name='grefs(unc).json')
    with open(f'{root}/refer_seg/grefcoco/grefs(unc).json', 'w') as f:
        f.write('[{"ref_id": 0,\n oops}]')
    with pytest.raises(DatasetFormatError, match='line 2, column 2'):
        GRefCOCODataset(data_root=root)
