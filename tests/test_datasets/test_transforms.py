"""The MUSE pipeline: loading, question sampling, conversation, codebook tokens, tokenization,
resizing, packing and collation."""
import json
import os.path as osp
import pickle
import shutil

import numpy as np
import pytest
from conftest import captured_log_records
import torch
from mmengine.dataset import pseudo_collate
from PIL import Image
from torch.utils.data import DataLoader

from pixellm.datasets import DatasetFormatError, MUSEDataset
from pixellm.datasets.transforms import (BuildMuseConversation, DecodeTargetMasks,
                                         ExpandSegTokens, LoadImageFromFile, PackPixelLMInputs,
                                         ResizeLongestSide, SampleQuestion, TokenizeConversation)
from pixellm.datasets.transforms.conversation import (EXPAND_LONG_QUESTION_TEMPLATES,
                                                      LONG_QUESTION_TEMPLATES, compose_answer)
from pixellm.datasets.transforms.loading import decode_segmentation
from pixellm.text.codebook_tokens import codebook_token_strings
from pixellm.text.tokenizers import build_tokenizer
from pixellm.structures import PixelLMDataSample
from pixellm.utils.constants import IGNORE_INDEX

TINY = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'data', 'muse_tiny')
TINY_PREFIX = dict(img_path='images', train2017_img_path='images')
CODEBOOK = codebook_token_strings(2, 3)
TOKENIZER = dict(type='TinyTokenizer', extra_tokens=CODEBOOK)
# The default text processor: the tiny tokenizer (which gets CODEBOOK), a 2 x 3 codebook.
TEXT_PROCESSOR = dict(type='TextProcessor')


def blob_mask():
    """The fixture's RLE instance (record 0), built independently of its encoding."""
    mask = np.zeros((20, 24), dtype=bool)
    mask[10:16, 12:21] = True
    return mask


def tiny_info(index=0, test_mode=True):
    dataset = MUSEDataset(ann_file='muse_tiny.json', data_root=TINY, data_prefix=TINY_PREFIX,
                          test_mode=test_mode)
    return dataset.get_data_info(index)


def full_pipeline(max_length=512, deterministic=True):
    return [
        dict(type='LoadImageFromFile'),
        dict(type='SampleQuestion'),
        dict(type='DecodeTargetMasks'),
        dict(type='BuildMuseConversation', deterministic=deterministic),
        dict(type='ExpandSegTokens', text_processor=TEXT_PROCESSOR),
        dict(type='TokenizeConversation', text_processor=TEXT_PROCESSOR, max_length=max_length),
        dict(type='ResizeLongestSide', size=48),
        dict(type='PackPixelLMInputs'),
    ]


def run(transforms, results):
    for t in transforms:
        results = t(results)
    return results


# ----------------------------------------------------------------------------- loading


def test_load_image_gives_rgb_uint8_and_shapes():
    results = LoadImageFromFile()(tiny_info(0))
    img = results['img']
    assert img.dtype == np.uint8 and img.shape == (20, 24, 3)
    assert results['ori_shape'] == (20, 24) == results['img_shape']
    assert tuple(img[12, 15]) == (30, 70, 220)


def test_load_image_converts_greyscale_to_rgb(tmp_path):
    path = tmp_path / 'grey.png'
    Image.fromarray(np.full((5, 7), 77, np.uint8), mode='L').save(path)
    img = LoadImageFromFile()(dict(img_path=str(path)))['img']
    assert img.shape == (5, 7, 3) and (img == 77).all()


def _copy_tiny(tmp_path):
    root = tmp_path / 'tiny'
    shutil.copytree(TINY, root)
    return root


def test_missing_image_names_the_file_and_record(tmp_path):
    root = _copy_tiny(tmp_path)
    (root / 'images' / 'img_0.png').unlink()
    info = MUSEDataset(ann_file='muse_tiny.json', data_root=str(root),
                       data_prefix=TINY_PREFIX).get_data_info(0)
    with pytest.raises(FileNotFoundError) as err:
        LoadImageFromFile()(info)
    message = str(err.value)
    assert 'img_0.png' in message and 'record 0 (id=7)' in message and "'file_name'" in message


def test_corrupt_image_names_the_file_record_and_field(tmp_path):
    root = _copy_tiny(tmp_path)
    (root / 'images' / '000000000123.png').write_bytes(b'not a png at all')
    info = MUSEDataset(ann_file='muse_tiny.json', data_root=str(root),
                       data_prefix=TINY_PREFIX).get_data_info(1)
    with pytest.raises(DatasetFormatError) as err:
        LoadImageFromFile()(info)
    assert err.value.file.endswith('000000000123.png')
    assert 'record 1 (id=123)' in err.value.record
    assert err.value.field == 'coco_url'
    assert 'cannot be decoded' in str(err.value)


def test_image_size_must_match_the_record(tmp_path):
    root = _copy_tiny(tmp_path)
    records = json.loads((root / 'muse_tiny.json').read_text())
    records[0]['height'] = 21
    # Keep the record self-consistent so that only the image check can fail.
    records[0]['answers'] = [[records[0]['answers'][0][0]]]
    records[0]['questions'] = records[0]['questions'][:1]
    records[0]['text_answers'] = ['It is {seg}.']
    (root / 'muse_tiny.json').write_text(json.dumps(records))
    info = MUSEDataset(ann_file='muse_tiny.json', data_root=str(root),
                       data_prefix=TINY_PREFIX).get_data_info(0)
    with pytest.raises(DatasetFormatError) as err:
        LoadImageFromFile()(info)
    assert err.value.field == 'height/width'
    assert 'record 0 (id=7)' in err.value.record
    assert '20x24' in str(err.value) and '21x24' in str(err.value)


def test_decode_segmentation_polygon_and_both_rle_forms():
    info = tiny_info(0)
    square = decode_segmentation(info['answers'][0][0]['segmentation'], 20, 24)
    assert square.dtype == bool and square.shape == (20, 24)
    assert square[4, 5] and not square[0, 0] and not square[12, 15]
    rows, cols = np.nonzero(square)
    # pycocotools fills the pixels whose centres lie inside x in [3, 9), y in [2, 7).
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 6, 3, 8)
    uncompressed = decode_segmentation(info['answers'][0][1]['segmentation'], 20, 24)
    compressed = decode_segmentation(info['answers'][1][0]['segmentation'], 20, 24)
    assert np.array_equal(uncompressed, blob_mask())
    assert np.array_equal(compressed, blob_mask())


def test_decode_segmentation_merges_polygons_by_union():
    two = [[0, 0, 4, 0, 4, 4, 0, 4], [2, 2, 6, 2, 6, 6, 2, 6]]
    merged = decode_segmentation(two, 8, 8)
    first = decode_segmentation(two[:1], 8, 8)
    second = decode_segmentation(two[1:], 8, 8)
    assert merged.dtype == bool
    assert np.array_equal(merged, first | second)


def test_decode_target_masks_in_answer_order():
    results = run([LoadImageFromFile(), SampleQuestion(), DecodeTargetMasks()], tiny_info(0))
    masks = results['gt_masks']
    assert masks.dtype == bool and masks.shape == (2, 20, 24)
    assert masks[0][4, 5] and not masks[0][12, 15]
    assert np.array_equal(masks[1], blob_mask())


def test_mask_size_mismatch_names_file_record_question_and_target():
    results = run([LoadImageFromFile(), SampleQuestion()], tiny_info(1))
    # Past load-time validation (e.g. a record edited in the pipeline): the RLE is 20x25.
    results['targets'] = [dict(segmentation=dict(size=[20, 25], counts=[500]))]
    with pytest.raises(DatasetFormatError) as err:
        DecodeTargetMasks()(results)
    assert err.value.file.endswith('muse_tiny.json')
    assert err.value.record == "record 0 (id=7), question 1 'Which object is on the right?', target 0"
    assert err.value.field == 'answers[1][0].segmentation'
    assert '20x25' in str(err.value) and '20x24' in str(err.value)


# ----------------------------------------------------------------------------- questions


def test_sample_question_is_random_in_training_and_fixed_in_test():
    info = tiny_info(0, test_mode=False)
    chosen = set()
    for seed in range(20):
        np.random.seed(seed)
        chosen.add(SampleQuestion()(dict(info))['question_index'])
    assert chosen == {0, 1}
    fixed = SampleQuestion()(tiny_info(1, test_mode=True))
    assert fixed['question_index'] == 1
    assert fixed['question'] == 'Which object is on the right?'
    assert fixed['num_targets'] == 1 and fixed['text_answer'] == 'It is {seg}.'


def test_sample_question_keeps_every_target_of_the_question():
    results = SampleQuestion()(tiny_info(0, test_mode=True))
    assert [t['id'] for t in results['targets']] == [71, 72]


def test_compose_answer_matches_the_official_forms():
    assert compose_answer(['A cat', 'dog', 'bird'], True, '') == \
        'A cat is {seg}, dog is {seg} and bird is {seg}.'
    assert compose_answer(['cat'], True, '') == 'cat is {seg}.'
    assert compose_answer(['Cat', 'Dog'], False, 'Sure, {class_name} are {seg}.') == \
        'Sure, cat, dog are {seg} and {seg}.'


def test_conversation_uses_the_text_answer():
    results = run([SampleQuestion(), BuildMuseConversation(deterministic=True)], tiny_info(0))
    assert results['conversation'] == [
        dict(role='user', content='<image>\nSegment the square and the blob. Please respond with '
             'segmentation mask.'),
        dict(role='assistant', content='The square is {seg} and the blob is {seg}.'),
    ]
    assert results['answer'] == 'The square is {seg} and the blob is {seg}.'


def test_composed_answer_is_deterministic_in_test_pipelines():
    results = run([SampleQuestion(), BuildMuseConversation(deterministic=True)], tiny_info(2))
    # rephrased_name when there is one, category_name otherwise; one clause per target.
    assert results['answer'] == 'small yellow cat is {seg} and dog is {seg}.'


def test_composed_answer_in_training_draws_names_and_forms():
    info = SampleQuestion()(tiny_info(2))
    answers = set()
    for seed in range(200):
        np.random.seed(seed)
        answer = BuildMuseConversation()(dict(info))['answer']
        assert answer.count('{seg}') == 2
        answers.add(answer)
    assert any(a.startswith('small yellow cat is {seg}') for a in answers)
    assert any(a.startswith('cat is {seg}') for a in answers)
    # The multi-target form lowercases the joined names.
    assert any('small yellow cat, dog are {seg} and {seg}' in a for a in answers)
    never = {BuildMuseConversation(rephrased_name_prob=0.0)(dict(info))['answer']
             for _ in range(30)}
    assert not any('small yellow cat' in a for a in never)


def test_question_templates_and_the_expand_flag():
    info = SampleQuestion()(tiny_info(0))
    question = info['question']

    def seen(transform):
        contents = set()
        for seed in range(300):
            np.random.seed(seed)
            contents.add(transform(dict(info))['conversation'][0]['content'])
        return contents

    expected = {'<image>\n' + t.format(sent=question) for t in LONG_QUESTION_TEMPLATES}
    assert seen(BuildMuseConversation()) == expected
    expected |= {'<image>\n' + t.format(sent=question) for t in EXPAND_LONG_QUESTION_TEMPLATES}
    assert seen(BuildMuseConversation(use_expand_question_list=True)) == expected


def test_expand_seg_tokens_writes_one_codebook_per_target():
    results = run([SampleQuestion(), DecodeTargetMasks(),
                   BuildMuseConversation(deterministic=True), ExpandSegTokens(TEXT_PROCESSOR)], tiny_info(0))
    target = ' '.join(CODEBOOK)
    assert results['answer'] == f'The square is {target} and the blob is {target}.'
    assert results['conversation'][1]['content'] == results['answer']
    assert '[SEG' not in results['conversation'][0]['content']
    assert results['codebook_tokens'] == CODEBOOK


def test_expand_seg_tokens_rejects_a_count_mismatch():
    results = run([SampleQuestion(), DecodeTargetMasks(),
                   BuildMuseConversation(deterministic=True)], tiny_info(1))
    results['conversation'][1]['content'] = 'It is {seg} or {seg}.'
    with pytest.raises(DatasetFormatError) as err:
        ExpandSegTokens(TEXT_PROCESSOR)(results)
    assert err.value.field == 'text_answers[1]'
    assert err.value.record == 'record 0 (id=7), question 1'
    assert 'more {seg} than instances' in str(err.value)


# ----------------------------------------------------------------------------- tokens


def tokenized(info, **kwargs):
    return run([SampleQuestion(), DecodeTargetMasks(), BuildMuseConversation(deterministic=True),
                ExpandSegTokens(TEXT_PROCESSOR), TokenizeConversation(TEXT_PROCESSOR, **kwargs)], info)


def test_tokenized_labels_cover_every_codebook_token():
    tokenizer = build_tokenizer(TOKENIZER)
    codebook_ids = torch.tensor(tokenizer.convert_tokens_to_ids(CODEBOOK))
    results = tokenized(tiny_info(0))
    input_ids, labels, prompt_ids = (results['input_ids'], results['labels'],
                                     results['prompt_ids'])
    is_code = torch.isin(input_ids, codebook_ids)
    assert int(is_code.sum()) == 2 * len(CODEBOOK)
    assert torch.equal(labels[is_code], input_ids[is_code])
    # The prompt is the unsupervised prefix; supervision starts right after it.
    assert torch.equal(input_ids[:len(prompt_ids)], prompt_ids)
    assert (labels[:len(prompt_ids)] == IGNORE_INDEX).all()
    assert (labels[len(prompt_ids):] != IGNORE_INDEX).all()
    assert tokenizer.decode(labels[len(prompt_ids):]) == ' ' + results['answer'] + '</s>'


def test_truncation_that_keeps_the_codebook_tokens_is_allowed():
    full = tokenized(tiny_info(0), max_length=None)['input_ids']
    results = tokenized(tiny_info(0), max_length=len(full) - 2)
    assert torch.equal(results['input_ids'], full[:len(full) - 2])
    assert len(results['labels']) == len(full) - 2


def test_truncation_that_drops_codebook_tokens_names_the_record():
    full = tokenized(tiny_info(0), max_length=None)['input_ids']
    with pytest.raises(DatasetFormatError) as err:
        tokenized(tiny_info(0), max_length=len(full) - 10)
    assert err.value.field == 'conversation'
    assert err.value.record == 'record 0 (id=7), question 0'
    assert 'codebook token' in str(err.value)


def test_overflow_skip_drops_a_sample_that_cannot_be_cut():
    full = tokenized(tiny_info(0), max_length=None)['input_ids']
    # Fits after a harmless cut: kept, exactly as with overflow='error'.
    kept = tokenized(tiny_info(0), max_length=len(full) - 2, overflow='skip')
    assert torch.equal(kept['input_ids'], full[:len(full) - 2])
    # Would lose codebook tokens: dropped (mmengine refetches another index), with a warning
    # naming the record.
    with captured_log_records() as records:
        assert tokenized(tiny_info(0), max_length=len(full) - 10, overflow='skip') is None
    text = ' '.join(r.getMessage() for r in records)
    assert 'record 0 (id=7), question 0' in text and 'skipped' in text
    with pytest.raises(ValueError, match="overflow must be 'error' or 'skip'"):
        TokenizeConversation(TEXT_PROCESSOR, overflow='drop')


def test_tokenizer_without_codebook_tokens_is_rejected():
    transforms = [SampleQuestion(), DecodeTargetMasks(), BuildMuseConversation(deterministic=True),
                  ExpandSegTokens(TEXT_PROCESSOR),
                  TokenizeConversation(dict(TEXT_PROCESSOR, tokenizer=build_tokenizer(
                      dict(type='TinyTokenizer'))))]
    with pytest.raises(ValueError, match=r"splits codebook token '\[SEG0\]'"):
        run(transforms, tiny_info(0))


def test_tokenize_conversation_pickles_without_its_tokenizer():
    transform = TokenizeConversation(TEXT_PROCESSOR)
    info = run([SampleQuestion(), DecodeTargetMasks(), BuildMuseConversation(deterministic=True),
                ExpandSegTokens(TEXT_PROCESSOR)], tiny_info(0))
    expected = transform(dict(info))['input_ids']
    clone = pickle.loads(pickle.dumps(transform))
    assert clone.text_processor._tokenizer is None
    assert torch.equal(clone(dict(info))['input_ids'], expected)


# ----------------------------------------------------------------------------- resize and pack


@pytest.mark.parametrize('shape,expected', [((20, 24), (40, 48)), ((30, 12), (48, 19)),
                                            ((48, 10), (48, 10))])
def test_resize_longest_side(shape, expected):
    img = np.random.RandomState(0).randint(0, 256, (*shape, 3)).astype(np.uint8)
    results = ResizeLongestSide(size=48)(dict(img=img))
    assert results['img'].shape == (*expected, 3) and results['img'].dtype == np.uint8
    assert results['img_shape'] == expected
    assert results['scale_factor'] == (expected[1] / shape[1], expected[0] / shape[0])
    if shape == expected:
        assert np.array_equal(results['img'], img)


def test_resize_keeps_flat_colours():
    img = np.zeros((10, 20, 3), np.uint8)
    img[:] = (30, 70, 220)
    assert (ResizeLongestSide(size=448)(dict(img=img))['img'] == (30, 70, 220)).all()


def test_pipeline_end_to_end_packs_a_data_sample():
    dataset = MUSEDataset(ann_file='muse_tiny.json', data_root=TINY, data_prefix=TINY_PREFIX,
                          test_mode=True, pipeline=full_pipeline())
    out = dataset[0]
    assert set(out) == {'inputs', 'data_samples'}
    inputs, sample = out['inputs'], out['data_samples']
    assert inputs.dtype == torch.uint8 and inputs.shape == (3, 40, 48)
    assert inputs.is_contiguous()
    assert isinstance(sample, PixelLMDataSample)
    meta = sample.metainfo
    assert meta['img_path'].endswith('img_0.png')
    assert meta['ori_shape'] == (20, 24) and meta['img_shape'] == (40, 48)
    assert meta['question'] == 'Segment the square and the blob.'
    assert meta['answer'].count('[SEG0]') == 2 and meta['num_targets'] == 2
    assert meta['conversation'][1]['content'] == meta['answer']
    assert (meta['img_id'], meta['record_index'], meta['question_index']) == (7, 0, 0)
    masks = sample.gt_instances.masks
    assert masks.dtype == torch.bool and masks.shape == (2, 20, 24)
    assert torch.equal(masks[1], torch.from_numpy(blob_mask()))
    for key in ('input_ids', 'labels', 'prompt_ids'):
        assert getattr(sample, key).dtype == torch.long


def test_pack_names_the_transform_that_writes_a_missing_key():
    results = dict(img=np.zeros((4, 4, 3), np.uint8), img_path='x.png', ori_shape=(4, 4),
                   img_shape=(4, 4), question='q', answer='a', conversation=[])
    with pytest.raises(KeyError, match="'num_targets' \\(written by SampleQuestion\\)"):
        PackPixelLMInputs()(results)


def test_training_items_collate_with_pseudo_collate():
    dataset = MUSEDataset(ann_file='muse_tiny.json', data_root=TINY, data_prefix=TINY_PREFIX,
                          pipeline=full_pipeline(deterministic=False))
    loader = DataLoader(dataset, batch_size=2, shuffle=False, collate_fn=pseudo_collate)
    batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    assert [img.shape for img in batch['inputs']] == [(3, 40, 48), (3, 48, 48)]
    samples = batch['data_samples']
    assert [s.metainfo['img_id'] for s in samples] == [7, 123]
    for s in samples:
        assert len(s.gt_instances) == s.metainfo['num_targets']
        assert s.gt_instances.masks.shape[1:] == s.metainfo['ori_shape']


def test_test_items_cover_every_question_once():
    dataset = MUSEDataset(ann_file='muse_tiny.json', data_root=TINY, data_prefix=TINY_PREFIX,
                          test_mode=True, pipeline=full_pipeline())
    loader = DataLoader(dataset, batch_size=2, collate_fn=pseudo_collate)
    seen = [(s.metainfo['record_index'], s.metainfo['question_index'])
            for batch in loader for s in batch['data_samples']]
    assert seen == [(0, 0), (0, 1), (1, 0)]
    # The composed answer (record 1) is deterministic in the test pipeline.
    target = ' '.join(CODEBOOK)
    for seed in range(3):
        np.random.seed(seed)
        assert dataset[2]['data_samples'].metainfo['answer'] == \
            f'small yellow cat is {target} and dog is {target}.'


def test_expand_seg_tokens_follows_the_text_processors_codebook():
    from pixellm.datasets.transforms.conversation import ExpandSegTokens
    codebook = dict(type='SegCodebook', num_scales=1, tokens_per_scale=2)
    step = ExpandSegTokens(dict(TEXT_PROCESSOR, codebook=codebook))
    results = step(dict(conversation=[dict(role='user', content='<image>\nq'),
                                      dict(role='assistant', content='It is {seg}.')],
                        num_targets=1))
    assert results['answer'] == 'It is [SEG0] [SEG1].'
