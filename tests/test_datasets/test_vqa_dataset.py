"""LLaVA-Instruct as VQA data: the json format (generated here), multi-turn conversations with
the image token first, no masks, the full tokenizing pipeline, and load-time errors."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixellm.datasets import DatasetFormatError, LLaVAInstructDataset
from pixellm.datasets.transforms import BuildVQAConversation, DecodeTargetMasks, LoadImageFromFile
from pixellm.text.codebook_tokens import codebook_token_strings
from pixellm.text.tokenizers import build_tokenizer
from pixellm.utils.constants import IGNORE_INDEX

CODEBOOK = codebook_token_strings(2, 3)
TOKENIZER = dict(type='TinyTokenizer', extra_tokens=CODEBOOK)
# The default text processor: the tiny tokenizer (which gets CODEBOOK), a 2 x 3 codebook.
TEXT_PROCESSOR = dict(type='TextProcessor')
ANN = 'llava_dataset/llava_instruct_150k.json'

RECORDS = [
    dict(id='000000000042', image='000000000042.jpg', conversations=[
        dict(value='What is the cat doing?\n<image>', **{'from': 'human'}),
        dict(value='The cat is sleeping on a sofa.', **{'from': 'gpt'}),
        dict(value='What colour is the sofa?', **{'from': 'human'}),
        dict(value='It is red.', **{'from': 'gpt'}),
    ]),
    # Starts with an answer: the official loader drops that turn.
    dict(id='000000000043', image='000000000043.jpg', conversations=[
        dict(value='Hello.', **{'from': 'gpt'}),
        dict(value='<image>\nDescribe the image.', **{'from': 'human'}),
        dict(value='A dog runs on grass.', **{'from': 'gpt'}),
    ]),
]


def write_root(tmp_path, records=RECORDS):
    (tmp_path / 'llava_dataset').mkdir(exist_ok=True)
    (tmp_path / ANN).write_text(json.dumps(records))
    images = tmp_path / 'coco/train2017'
    images.mkdir(parents=True, exist_ok=True)
    for k, (h, w) in enumerate([(10, 14), (9, 7)]):
        pixels = np.full((h, w, 3), 40 * k, dtype=np.uint8)
        Image.fromarray(pixels).save(images / f'0000000000{42 + k}.jpg')
    return tmp_path


def test_multi_turn_conversation_with_the_image_token_first(tmp_path):
    dataset = LLaVAInstructDataset(data_root=str(write_root(tmp_path)))
    assert len(dataset) == 2
    info = dataset.get_data_info(0)
    assert info['img_path'] == str(tmp_path / 'coco/train2017/000000000042.jpg')
    assert info['img_id'] == '000000000042' and info['record_index'] == 0
    results = BuildVQAConversation()(info)
    assert results['conversation'] == [
        dict(role='user', content='<image>\nWhat is the cat doing?'),
        dict(role='assistant', content='The cat is sleeping on a sofa.'),
        dict(role='user', content='What colour is the sofa?'),
        dict(role='assistant', content='It is red.'),
    ]
    assert results['question'] == 'What is the cat doing?'
    assert results['answer'] == 'It is red.'
    assert results['targets'] == [] and results['num_targets'] == 0


def test_leading_answer_is_dropped(tmp_path):
    info = LLaVAInstructDataset(data_root=str(write_root(tmp_path))).get_data_info(1)
    conversation = BuildVQAConversation()(info)['conversation']
    assert [m['role'] for m in conversation] == ['user', 'assistant']
    assert conversation[0]['content'] == '<image>\nDescribe the image.'


def test_record_without_image_token_gets_it_on_the_first_user_turn():
    turns = [{'from': 'human', 'value': 'Q1'}, {'from': 'gpt', 'value': 'A1'},
             {'from': 'human', 'value': 'Q2 <image>'}, {'from': 'gpt', 'value': 'A2'}]
    conversation = BuildVQAConversation()(dict(conversations=turns))['conversation']
    assert conversation[0]['content'] == '<image>\nQ1'
    assert conversation[2]['content'] == 'Q2'
    no_token = BuildVQAConversation()(dict(conversations=turns[:2]))['conversation']
    assert no_token[0]['content'] == '<image>\nQ1'


def test_no_masks(tmp_path):
    info = LLaVAInstructDataset(data_root=str(write_root(tmp_path))).get_data_info(0)
    results = DecodeTargetMasks()(BuildVQAConversation()(LoadImageFromFile()(info)))
    assert results['gt_masks'].dtype == bool and results['gt_masks'].shape == (0, 10, 14)


def test_full_pipeline_supervises_every_answer(tmp_path):
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='BuildVQAConversation'),
        dict(type='DecodeTargetMasks'),
        dict(type='ExpandSegTokens', text_processor=TEXT_PROCESSOR),
        dict(type='TokenizeConversation', text_processor=TEXT_PROCESSOR, max_length=512),
        dict(type='ResizeLongestSide', size=28),
        dict(type='PackPixelLMInputs'),
    ]
    dataset = LLaVAInstructDataset(data_root=str(write_root(tmp_path)), pipeline=pipeline)
    packed = dataset[0]
    sample = packed['data_samples']
    assert tuple(packed['inputs'].shape) == (3, 20, 28)
    assert sample.gt_instances.masks.dtype == torch.bool
    assert tuple(sample.gt_instances.masks.shape) == (0, 10, 14) and sample.num_targets == 0
    tokenizer = build_tokenizer(TOKENIZER)
    supervised = tokenizer.decode(sample.labels[sample.labels != IGNORE_INDEX].tolist())
    assert 'The cat is sleeping on a sofa.' in supervised and 'It is red.' in supervised
    assert 'colour' not in supervised
    prompt = tokenizer.decode([i for i in sample.prompt_ids.tolist() if i >= 0])
    assert 'What colour is the sofa?' in prompt and 'It is red.' not in prompt


@pytest.mark.parametrize('edit, record, field, text', [
    (lambda r: r[0]['conversations'][2].update({'from': 'gpt'}),
     'record 0 (id=000000000042)', 'conversations[2].from', 'expected \'human\''),
    (lambda r: r[0]['conversations'].pop(), 'record 0 (id=000000000042)', 'conversations',
     'must end with a "gpt" answer'),
    (lambda r: r[1]['conversations'][2].update(value='<image> again'),
     'record 1 (id=000000000043)', 'conversations', '2 <image> tokens'),
    (lambda r: r[1].pop('image'), 'record 1 (id=000000000043)', 'image', 'missing'),
    (lambda r: r[0]['conversations'][1].update({'from': 'assistant'}),
     'record 0 (id=000000000042)', 'conversations[1].from', '"human" or "gpt"'),
    (lambda r: r[0].update(conversations=[]), 'record 0 (id=000000000042)', 'conversations',
     'non-empty list'),
])
def test_bad_records_name_file_record_and_field(tmp_path, edit, record, field, text):
    records = json.loads(json.dumps(RECORDS))
    edit(records)
    root = write_root(tmp_path, records)
    with pytest.raises(DatasetFormatError) as err:
        LLaVAInstructDataset(data_root=str(root))
    assert err.value.file == str(root / ANN)
    assert err.value.record == record and err.value.field == field
    assert text in str(err.value)


def test_missing_json_and_image_folder_name_the_path(tmp_path):
    root = write_root(tmp_path)
    with pytest.raises(FileNotFoundError, match='llava_dataset/other.json'):
        LLaVAInstructDataset(data_root=str(root), ann_file='llava_dataset/other.json')
    with pytest.raises(FileNotFoundError, match='coco/val2017'):
        LLaVAInstructDataset(data_root=str(root), data_prefix=dict(img_path='coco/val2017'))


def test_invalid_json_gives_line_and_column(tmp_path):
    root = write_root(tmp_path)
    (root / ANN).write_text('[{"id": 1,}]')
    with pytest.raises(DatasetFormatError, match='line 1, column'):
        LLaVAInstructDataset(data_root=str(root))
