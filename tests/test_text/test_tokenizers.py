"""Tests of the shipped tiny tokenizer, the pretrained-tokenizer wrapper and ``build_tokenizer``."""
import importlib.util
import os.path as osp
import subprocess
import sys

import pytest
from transformers import PreTrainedTokenizerFast

from pixellm.text.tokenizers import (TINY_TOKENIZER_FILE, PretrainedTokenizer, TinyTokenizer,
                                       build_tokenizer, configure_tokenizer)

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SEG_TOKENS = [f'[SEG{i}]' for i in range(6)]


def test_tiny_tokenizer_special_token_layout():
    tokenizer = TinyTokenizer()
    assert len(tokenizer) == 1024
    assert tokenizer.unk_token == '<unk>'
    assert (tokenizer.bos_token, tokenizer.eos_token) == ('<s>', '</s>')
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == tokenizer.unk_token
    assert tokenizer.pad_token_id == 0
    assert tokenizer.model_max_length == 512
    assert tokenizer.padding_side == 'right'


def test_tiny_tokenizer_adds_bos_only():
    tokenizer = TinyTokenizer()
    ids = tokenizer('Please segment the red circle.').input_ids
    assert ids[0] == 1
    assert 1 not in ids[1:] and 2 not in ids
    assert tokenizer('red', add_special_tokens=False).input_ids[0] != 1


@pytest.mark.parametrize('text', [
    'Please segment the red circle on the left.',
    '  two leading spaces, two  inner and a trailing one ',
    'USER: <image>\nWhat is the largest object? ASSISTANT: It is the blue star .',
    'Ünïcödé, 中文 and emoji \U0001F600 never become unk!',
    'tabs\tand\nnewlines\n\n',
])
def test_tiny_tokenizer_round_trip(text):
    tokenizer = TinyTokenizer()
    ids = tokenizer(text).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids) == '<s>' + text


def test_tiny_tokenizer_merges_domain_words():
    # Training on segmentation Q&A must have made the frequent words single tokens.
    tokenizer = TinyTokenizer()
    for word in [' segment', ' circle', ' triangle', ' left', ' ASSISTANT', ' Sure', ' largest']:
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word


def test_seg_tokens_added_with_add_tokens_encode_to_their_ids():
    tokenizer = TinyTokenizer()
    assert tokenizer.add_tokens(SEG_TOKENS) == 6
    seg_ids = tokenizer.convert_tokens_to_ids(SEG_TOKENS)
    assert seg_ids == list(range(1024, 1030))
    text = 'It is [SEG0] [SEG1] .'
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert [i for i in ids if i >= 1024] == [1024, 1025]
    assert tokenizer.decode(ids) == text
    # Neighbouring text must not swallow the added token.
    glued = tokenizer('x[SEG5]y', add_special_tokens=False).input_ids
    assert 1029 in glued and tokenizer.decode(glued) == 'x[SEG5]y'


def test_extra_tokens_then_im_start_end_in_official_order():
    tokenizer = TinyTokenizer(use_im_start_end=True, extra_tokens=SEG_TOKENS[:2])
    assert tokenizer.convert_tokens_to_ids(['[SEG0]', '[SEG1]', '<im_start>', '<im_end>']) == [
        1024, 1025, 1026, 1027]
    added = tokenizer.added_tokens_decoder
    assert added[1026].special and added[1027].special
    assert not added[1024].special
    ids = tokenizer('a<im_start>b<im_end> [SEG1]', add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == 'ab [SEG1]'


def test_extra_tokens_accepts_a_single_string():
    tokenizer = TinyTokenizer(extra_tokens='[SEG]')
    assert len(tokenizer) == 1025
    assert tokenizer.convert_tokens_to_ids('[SEG]') == 1024


def test_tiny_tokenizer_pads_right_with_unk():
    tokenizer = TinyTokenizer()
    batch = tokenizer(['red', 'the red circle is on the left'], padding=True)
    short = batch.input_ids[0]
    assert short[-1] == 0 and batch.attention_mask[0][-1] == 0
    left = TinyTokenizer(padding_side='left')(['red', 'the red circle'], padding=True)
    assert left.input_ids[0][0] == 0


def test_configure_tokenizer_rejects_bad_padding_side():
    with pytest.raises(ValueError, match='padding_side'):
        TinyTokenizer(padding_side='middle')


def test_configure_tokenizer_without_unk_pads_with_eos():
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=TINY_TOKENIZER_FILE, bos_token='<s>',
                                        eos_token='</s>')
    assert tokenizer.unk_token is None and tokenizer.pad_token is None
    configure_tokenizer(tokenizer)
    assert tokenizer.pad_token == '</s>'


def test_pretrained_tokenizer_from_local_folder(tmp_path):
    saved = TinyTokenizer(extra_tokens=SEG_TOKENS[:1])
    # A checkpoint may ship another pad token; the wrapper must still pad with unk.
    saved.pad_token = '</s>'
    saved.save_pretrained(str(tmp_path))
    tokenizer = PretrainedTokenizer(str(tmp_path), use_im_start_end=True, model_max_length=64,
                                    padding_side='left')
    assert tokenizer.pad_token == '<unk>' and tokenizer.pad_token_id == 0
    assert tokenizer.model_max_length == 64 and tokenizer.padding_side == 'left'
    new_ids = tokenizer.convert_tokens_to_ids(['[SEG0]', '<im_start>', '<im_end>'])
    assert new_ids == [1024, 1025, 1026]
    text = 'Please segment the star [SEG0].'
    assert tokenizer(text).input_ids == saved(text).input_ids


def test_build_tokenizer_from_config_and_instance():
    tokenizer = build_tokenizer(dict(type='TinyTokenizer', model_max_length=128,
                                     extra_tokens=['[SEG0]']))
    assert tokenizer.model_max_length == 128 and len(tokenizer) == 1025
    assert build_tokenizer(tokenizer) is tokenizer
    with pytest.raises(TypeError, match='config dict'):
        build_tokenizer('TinyTokenizer')


def test_build_tokenizer_unknown_type_names_registry_and_close_names():
    with pytest.raises(KeyError) as info:
        build_tokenizer(dict(type='TinyTokeniser'))
    message = str(info.value)
    assert "'tokenizer' registry" in message and 'TinyTokenizer' in message


def test_registry_location_registers_tokenizers_lazily():
    # A fresh interpreter that never imports pixellm.text.tokenizers: the registry's lazy
    # location must import it when a config names a tokenizer.
    code = ('from pixellm.registry import TOKENIZERS\n'
            "t = TOKENIZERS.build(dict(type='TinyTokenizer'))\n"
            'print(len(t))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '1024'


def _load_training_script():
    path = osp.join(REPO_ROOT, 'tools', 'misc', 'train_tiny_tokenizer.py')
    spec = importlib.util.spec_from_file_location('train_tiny_tokenizer', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_asset_is_small_and_reproducible(tmp_path, capsys):
    assert osp.getsize(TINY_TOKENIZER_FILE) < 200 * 1024
    script = _load_training_script()
    assert script.main(['--check', '--out', TINY_TOKENIZER_FILE]) == 0
    # --check must notice a stale asset.
    stale = tmp_path / 'stale.json'
    script.main(['--out', str(stale), '--vocab-size', '600'])
    assert script.main(['--check', '--out', str(stale)]) == 1
