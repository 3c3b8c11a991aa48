"""CodebookContextHead: the context it reads, its value, its empty case and its place in PixelLM."""
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_trains_llm_not_decoder, build_tiny, fit_loss_term, make_batch

from projects.pixellm_tiny_demo.pixellm_tiny_demo import CodebookContextHead, preceding_tokens

SEG = (100, 101)  # two codebook ids in the hand-made sequences


def test_preceding_tokens_skips_image_slots_codebook_tokens_and_the_sequence_start():
    #        0  1  2   3   4  5  6    7    8  9  10   11
    ids = torch.tensor([1, 5, -1, -1, 7, 8, 100, 101, 9, 100, 101, 2])
    got = preceding_tokens(ids, torch.tensor([6, 9, 1]), window=4,
                           ignore_ids=torch.tensor(SEG))
    assert got.tolist() == [
        [8, 7, -1, -1],      # two image slots
        [9, -1, -1, 8],      # the previous target's codebook tokens are not context
        [1, -1, -1, -1],     # nothing before the sequence start
    ]
    # Without ignore ids the codebook tokens count as context.
    assert preceding_tokens(ids, torch.tensor([9]), 2).tolist() == [[9, 101]]


def test_value_matches_a_loop_over_states_and_context_tokens():
    torch.manual_seed(0)
    loss = CodebookContextHead(in_channels=6, vocab_size=12, window=3, loss_weight=0.5)
    ids = torch.tensor([[1, 3, 4, 10, 11, 5, 10, 11, 0],
                        [2, -1, 6, 7, 10, 11, 0, 0, 0]])
    states = [torch.randn(2, 1, 2, 6), torch.randn(1, 1, 2, 6)]
    first = [torch.tensor([3, 6]), torch.tensor([4])]
    ignore = torch.tensor([10, 11, 0])
    got = loss(states, ids, first, ignore)

    # Independent: every (state, context token) pair, context written out by hand.
    context = {(0, 0): [4, 3, 1], (0, 1): [5], (1, 0): [7, 6]}
    terms = []
    for (b, t), tokens in context.items():
        for state in states[b][t].reshape(-1, 6):
            logits = loss.head(state)
            terms += [F.cross_entropy(logits[None], torch.tensor([tok])) for tok in tokens]
    want = 0.5 * torch.stack(terms).mean()
    torch.testing.assert_close(got, want)


def test_no_context_gives_a_connected_zero():
    loss = CodebookContextHead(in_channels=4, vocab_size=8, window=2)
    states = [torch.randn(1, 1, 1, 4, requires_grad=True), torch.zeros(0, 1, 1, 4)]
    ids = torch.tensor([[5, 6], [1, 2]])
    value = loss(states, ids, [torch.tensor([0]), torch.zeros(0, dtype=torch.long)])
    assert value.item() == 0.0
    value.backward()
    assert states[0].grad is not None and torch.count_nonzero(states[0].grad) == 0
    assert all(p.grad is not None for p in loss.head.parameters())


def test_mismatched_inputs_and_bad_window_are_refused():
    loss = CodebookContextHead(in_channels=4, vocab_size=8)
    with pytest.raises(ValueError, match='2 state groups, 1 position groups and 2 sequences'):
        loss([torch.zeros(0, 1, 1, 4)] * 2, torch.zeros(2, 3, dtype=torch.long),
             [torch.zeros(0, dtype=torch.long)])
    with pytest.raises(ValueError, match='window must be at least 1'):
        CodebookContextHead(in_channels=4, vocab_size=8, window=0)


def test_pixellm_adds_the_term_and_it_trains_the_llm():
    plain = build_tiny()
    assert len(plain.aux_heads) == 0
    assert 'loss_codebook_context' not in plain(**make_batch(plain), mode='loss')

    model = build_tiny(aux_heads=[dict(type='CodebookContextHead', window=4)])
    head = model.aux_heads[0].head
    # Widths come from the model: LLM width in, whole tokenizer (with codebook tokens) out.
    assert (head.in_features, head.out_features) == (model.llm.hidden_size, len(model.tokenizer))
    losses = model(**make_batch(model), mode='loss')
    ctx = losses['loss_codebook_context']
    # Before training the head predicts about uniformly over the vocabulary.
    assert abs(ctx.item() - torch.log(torch.tensor(float(len(model.tokenizer)))).item()) < 1.0
    assert_trains_llm_not_decoder(model, ctx)


def test_context_is_the_text_just_before_each_target_in_a_real_batch():
    """On the model's own spliced sequences (image slots inside), each target's context decodes
    to the end of the text written before its first codebook token."""
    model = build_tiny(aux_heads=[dict(type='CodebookContextHead', window=4)])
    with torch.no_grad():
        out = model(**make_batch(model, targets=(2, 1)), mode='tensor')
    ignore = torch.tensor(list(model.codebook.token_ids) + [model.pad_token_id])
    decode = model.tokenizer.decode
    checked = 0
    for ids, pos in zip(out['input_ids'], out['codebook_positions']):
        ctx = preceding_tokens(ids, pos[:, 0], 4, ignore)
        for first, window in zip(pos[:, 0].tolist(), ctx):
            # The run of text tokens nearest the target is the end of the text before it.
            run = window[:int((window >= 0).long().cumprod(0).sum())]
            assert len(run) >= 2
            before = [t for t in ids[:first].tolist() if t >= 0]
            assert decode(before).endswith(decode(run.flip(0).tolist()))
            assert '[SEG' not in decode(window[window >= 0].tolist())
            checked += 1
    assert checked == 3
    # The second target of the first sample: " and" is its context, the first target's last
    # codebook token is not.
    second = preceding_tokens(out['input_ids'][0], out['codebook_positions'][0][1:, 0], 4, ignore)
    assert decode(second[0][:2].flip(0).tolist()) == ' and '
    assert second[0][2] == -1


def test_the_states_learn_the_words_before_their_target():
    """With the head frozen, the loss can only fall if the LLM moves the codebook states."""
    model = build_tiny(aux_heads=[dict(type='CodebookContextHead', window=4)])
    model.aux_heads[0].head.requires_grad_(False)
    data = make_batch(model, targets=(2, 1))
    params = [p for p in model.llm.parameters() if p.requires_grad]
    first, last = fit_loss_term(model, data, 'loss_codebook_context', params)
    assert last < 0.75 * first
