"""The text processor: one config key, handed to the model and every pipeline, built once."""
import os.path as osp
import pickle

import pytest
import torch
from conftest import REPO

from pixellm.registry import DATASETS, MODELS
from pixellm.text import (TextProcessor, build_text_processor, build_tokenizer,
                          encode_conversation, encode_prompt)
from pixellm.text.sharing import TextProcessorConflict, share_text_processor
from pixellm.utils.config import load_config
from pixellm.utils.constants import IMAGE_TOKEN_INDEX

TINY_MUSE = osp.join(REPO, 'configs', 'pixellm', 'pixellm_tiny_muse.py')
RECIPE_13B = osp.join(REPO, 'configs', 'pixellm', 'pixellm_13b_lora_8xb2_ga10_5k_mix.py')
MESSAGES = [dict(role='user', content='<image>\nWhere is the cat?'),
            dict(role='assistant', content='It is [SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5].')]


def text_steps(cfg):
    """Every pipeline step of the config's loaders that holds a text processor."""
    from pixellm.text.sharing import LOADER_KEYS, _pipelines
    return [(key, step) for key in LOADER_KEYS for pipeline in _pipelines(cfg.get(key) or {})
            for step in pipeline if 'text_processor' in step]


def test_processor_tokenizes_as_the_functions_do_with_the_codebook_tokens_added():
    processor = TextProcessor(
        tokenizer=dict(type='TinyTokenizer'), use_im_start_end=True,
        codebook=dict(type='SegCodebook', num_scales=2, tokens_per_scale=3))
    # The codebook's tokens come first after the base vocabulary, then <im_start>/<im_end>
    # (the official order, which the released checkpoints' rows follow).
    base = len(build_tokenizer(dict(type='TinyTokenizer')))
    assert processor.codebook_token_ids == list(range(base, base + 6))
    assert processor.tokenizer.convert_tokens_to_ids(['<im_start>', '<im_end>']) == \
        [base + 6, base + 7]
    reference = build_tokenizer(dict(type='TinyTokenizer', use_im_start_end=True,
                                     extra_tokens=[f'[SEG{i}]' for i in range(6)]))
    ours = processor.encode_conversation(MESSAGES)
    theirs = encode_conversation(MESSAGES, reference, 'vicuna_v1', use_im_start_end=True)
    assert torch.equal(ours['input_ids'], theirs['input_ids'])
    assert torch.equal(ours['labels'], theirs['labels'])
    # The image is one placeholder between <im_start> and <im_end>.
    ids = ours['input_ids'].tolist()
    at = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[at - 1:at + 2] == [base + 6, IMAGE_TOKEN_INDEX, base + 7]
    prompt = processor.encode_prompt(MESSAGES[:1])
    assert torch.equal(prompt, encode_prompt(MESSAGES[:1], reference, 'vicuna_v1',
                                             use_im_start_end=True))
    assert torch.equal(prompt, ours['input_ids'][:len(prompt)])
    assert processor.expand_targets('It is {seg}.') == MESSAGES[1]['content']
    assert processor.image_turn('Where?') == '<image>\nWhere?'


def test_chat_template_choice_changes_the_ids():
    llama2 = TextProcessor(chat_template='llava_llama_2').encode_prompt(MESSAGES[:1])
    vicuna = TextProcessor().encode_prompt(MESSAGES[:1])
    text = build_tokenizer(dict(type='TinyTokenizer')).decode(llama2[llama2 >= 0])
    assert '[INST]' in text and not torch.equal(llama2, vicuna)
    with pytest.raises(KeyError, match="unknown chat template 'vicuna'"):
        TextProcessor(chat_template='vicuna')


def test_built_once_per_config_and_pickled_without_its_tokenizer():
    cfg = dict(type='TextProcessor', tokenizer=dict(type='TinyTokenizer', model_max_length=77))
    first = build_text_processor(cfg)
    assert build_text_processor(dict(cfg)) is first
    assert build_text_processor(dict(cfg, chat_template='llava_llama_2')) is not first
    ids = first.codebook_token_ids
    clone = pickle.loads(pickle.dumps(first))
    assert clone._tokenizer is None and clone.codebook_token_ids == ids
    with pytest.raises(ValueError, match='has no type'):
        build_text_processor(dict(tokenizer=dict(type='TinyTokenizer')))


def test_a_tokenizer_without_the_codebook_tokens_is_refused():
    processor = TextProcessor(tokenizer=build_tokenizer(dict(type='TinyTokenizer')))
    with pytest.raises(ValueError, match=r"splits codebook token '\[SEG0\]'"):
        processor.codebook_token_ids


def test_load_config_hands_one_processor_to_the_model_and_every_pipeline_step():
    cfg = load_config(TINY_MUSE)
    steps = text_steps(cfg)
    assert [(key, step['type']) for key, step in steps] == [
        ('train_dataloader', 'ExpandSegTokens'), ('train_dataloader', 'TokenizeConversation'),
        ('test_dataloader', 'ExpandSegTokens'), ('test_dataloader', 'TokenizeConversation')]
    assert all(step['text_processor'] == cfg.text_processor for _, step in steps)
    assert cfg.model.text_processor == cfg.text_processor
    # Built in one process, the model and the dataset's steps share the processor object.
    model = MODELS.build(cfg.model)
    dataset_cfg = dict(cfg.test_dataloader.dataset.to_dict(), lazy_init=True)
    dataset = DATASETS.build(dataset_cfg)
    held = [t.text_processor for t in dataset.pipeline.transforms if hasattr(t, 'text_processor')]
    assert len(held) == 2 and all(p is model.text_processor for p in held)
    assert model.codebook.token_ids == model.text_processor.codebook_token_ids


def test_one_change_reaches_the_model_and_all_pipelines():
    # --cfg-options on the one key: the model and every step of the 13B recipe's 11 training
    # sources and its val/test pipelines follow.
    cfg = load_config(RECIPE_13B, cfg_options={'text_processor.chat_template': 'llava_llama_2'})
    steps = text_steps(cfg)
    assert len(steps) == 2 * (11 + 2)
    for processor in [cfg.model.text_processor] + [s['text_processor'] for _, s in steps]:
        assert processor['chat_template'] == 'llava_llama_2'
        assert processor['tokenizer']['name_or_path'] == \
            'llava-llama-2-13b-chat-lightning-preview'


def test_a_step_or_model_with_another_processor_is_an_error():
    cfg = load_config(TINY_MUSE)
    cfg.test_dataloader.dataset.pipeline[5]['text_processor'] = dict(
        cfg.text_processor, chat_template='llava_llama_2')
    with pytest.raises(TextProcessorConflict, match='a TokenizeConversation step of '
                       'test_dataloader names its own text_processor'):
        share_text_processor(cfg)
    cfg = load_config(TINY_MUSE)
    cfg.model['text_processor'] = dict(cfg.text_processor, use_im_start_end=True)
    with pytest.raises(TextProcessorConflict, match='model.text_processor differs'):
        share_text_processor(cfg)


def test_a_step_built_without_a_processor_says_how_to_get_one():
    from pixellm.datasets.transforms import ExpandSegTokens, TokenizeConversation
    for step in (ExpandSegTokens, TokenizeConversation):
        with pytest.raises(ValueError, match="needs the model's text_processor: set the "
                           "config's top-level text_processor key"):
            step()
