"""Codebook tokens round-trip through the tokenizer, answer expansion and hidden-state gathering."""
import pytest
import torch

from pixellm.text.chat_templates import encode_conversation
from pixellm.models.codebooks import SegCodebook
from pixellm.text.codebook_tokens import count_seg_placeholders
from pixellm.text.tokenizers import build_tokenizer


def make(num_scales=2, tokens_per_scale=3, **kwargs):
    codebook = SegCodebook(num_scales=num_scales, tokens_per_scale=tokens_per_scale, **kwargs)
    tokenizer = build_tokenizer(dict(type='TinyTokenizer'))
    codebook.add_to_tokenizer(tokenizer)
    return codebook, tokenizer


def test_tokens_are_named_and_ordered_as_official():
    codebook, tokenizer = make()
    assert codebook.tokens == [f'[SEG{i}]' for i in range(6)]
    assert codebook.token_ids == list(range(1024, 1030))
    assert codebook.target_text == '[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]'


@pytest.mark.parametrize('num_targets', [0, 1, 3])
def test_round_trip_through_tokenizer_and_gather(num_targets):
    codebook, tokenizer = make()
    answer = 'Here: ' + ', '.join(['{seg}'] * num_targets) + '.'
    assert count_seg_placeholders(answer) == num_targets
    text = codebook.expand(answer)
    messages = [dict(role='user', content='<image>\nFind them.'),
                dict(role='assistant', content=text)]
    ids = encode_conversation(messages, tokenizer)['input_ids']
    # Decoding gives the expanded answer back.
    assert text in tokenizer.decode(ids[ids >= 0])
    seq = ids.clamp(min=0)[None]
    assert codebook.count_targets(seq) == [num_targets]
    # Hidden states: make each position's state equal its index, so gathering is checkable.
    hidden = torch.arange(seq.shape[1], dtype=torch.float)[None, :, None].repeat(1, 1, 4)
    states = codebook.gather(hidden, seq)[0]
    assert states.shape == (num_targets, 2, 3, 4)
    positions = torch.nonzero(torch.isin(seq[0], torch.tensor(codebook.token_ids))).flatten()
    # Official convention: the state one position before each token (the one that emits it).
    expected = (positions - 1).float().view(num_targets, 2, 3)
    torch.testing.assert_close(states[..., 0], expected)


def test_hidden_offset_zero_takes_the_tokens_own_state():
    codebook, tokenizer = make(hidden_offset=0)
    seq = torch.tensor([[5] + codebook.token_ids + [7]])
    hidden = torch.arange(8, dtype=torch.float)[None, :, None]
    torch.testing.assert_close(codebook.gather(hidden, seq)[0].flatten(),
                               torch.arange(1, 7, dtype=torch.float))


def test_scale_major_grouping():
    codebook, _ = make(num_scales=2, tokens_per_scale=2)
    seq = torch.tensor([[9] + codebook.token_ids])
    hidden = torch.arange(5, dtype=torch.float)[None, :, None]
    states = codebook.gather(hidden, seq)[0]
    # [SEG0] [SEG1] belong to scale 0, [SEG2] [SEG3] to scale 1.
    assert states[0, 0].flatten().tolist() == [0.0, 1.0]
    assert states[0, 1].flatten().tolist() == [2.0, 3.0]


def test_broken_targets_raise_in_strict_mode_and_are_skipped_otherwise():
    codebook, _ = make(num_scales=1, tokens_per_scale=3)
    a, b, c = codebook.token_ids
    seq = torch.tensor([[5, a, b, 9, a, b, c, 7, c]])
    with pytest.raises(ValueError, match='do not form whole targets'):
        codebook.find_targets(seq)
    found = codebook.find_targets(seq, strict=False)[0]
    assert found.tolist() == [[4, 5, 6]]


def test_errors():
    with pytest.raises(RuntimeError, match='add_to_tokenizer'):
        SegCodebook().find_targets(torch.zeros(1, 3, dtype=torch.long))
    codebook, _ = make()
    with pytest.raises(ValueError, match='starts with a codebook token'):
        codebook.gather(torch.zeros(1, 6, 2), torch.tensor([codebook.token_ids]))
    with pytest.raises(ValueError, match='exactly one'):
        SegCodebook(token_format='[SEG]')
    with pytest.raises(ValueError, match='distinct'):
        codebook.bind([1, 1, 2, 3, 4, 5])
