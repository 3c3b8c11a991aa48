"""GroundingHead: the coverage it targets, its value, its empty case and its place in PixelLM."""
import math

import numpy as np
import pytest
import torch
from conftest import assert_trains_llm_not_decoder, build_tiny, fit_loss_term, make_batch

from projects.pixellm_tiny_demo.pixellm_tiny_demo import GroundingHead, mask_grid_coverage


def test_coverage_is_the_mask_share_of_each_image_token_cell():
    # A 224 x 112 image resized to 112 x 56 (longest side 112) and padded to 112 x 112 on the
    # right; the LLM sees 8 x 8 tokens of 14 x 14 pixels.
    rng = np.random.default_rng(0)
    mask = rng.random((224, 112)) < 0.3
    mask[:60, :40] = True
    got = mask_grid_coverage(torch.from_numpy(mask)[None], (112, 56), 112, 8)[0].view(8, 8)
    # Independent: halve by 2 x 2 block means, pad, then 14 x 14 block means.
    resized = mask.reshape(112, 2, 56, 2).mean((1, 3))
    padded = np.zeros((112, 112))
    padded[:, :56] = resized
    want = padded.reshape(8, 14, 8, 14).mean((1, 3))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert torch.all(got[:, 4:] == 0)  # the padding is no object's


def test_value_matches_a_loop_over_kept_targets_and_positions():
    torch.manual_seed(0)
    loss = GroundingHead(in_channels=6, embed_dim=4, window=3, loss_weight=0.5)
    #                   0  1   2   3  4  5   6  7    8  9  10
    ids = torch.tensor([[1, -1, -1, -1, 5, 6, 20, 7, 20, 0, 0],
                        [-1, -1, -1, 8, 20, 3, 20, 0, 0, 0, 0]])
    hidden = torch.randn(2, 11, 6)
    first = [torch.tensor([6, 8]), torch.tensor([4, 6])]
    coverage = [torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.0, 0.0]]),
                torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.3, 0.0]])]
    got = loss(hidden, ids, first, coverage, ignore_ids=torch.tensor([20, 0]))

    # The window's positions by hand, keeping text only (not image slots, not the codebook id
    # 20, not padding 0, not before the start); sequence 1's first target covers nothing.
    kept = {(0, 0): (5, 4), (0, 1): (7, 5), (1, 1): (5, 3)}
    terms = []
    for (b, t), positions in kept.items():
        target = coverage[b][t] / coverage[b][t].sum()
        keys = loss.key(hidden[b, ids[b] < 0])
        for p in positions:
            scores = keys @ loss.query(hidden[b, p]) / math.sqrt(4)
            terms.append(-(target * scores.log_softmax(0)).sum())
    torch.testing.assert_close(got, 0.5 * torch.stack(terms).mean())


def test_nothing_kept_gives_a_zero_connected_to_the_states_and_both_projections():
    loss = GroundingHead(in_channels=4, window=2)
    hidden = torch.randn(2, 5, 4, requires_grad=True)
    ids = torch.tensor([[-1, -1, 3, 4, 9], [-1, -1, 0, 0, 0]])
    value = loss(hidden, ids, [torch.tensor([4]), torch.zeros(0, dtype=torch.long)],
                 [torch.zeros(1, 2), torch.zeros(0, 2)])
    assert value.item() == 0.0
    value.backward()
    assert hidden.grad is not None and torch.count_nonzero(hidden.grad) == 0
    for proj in (loss.query, loss.key):
        assert proj.weight.grad is not None and proj.bias.grad is not None


def test_mismatched_inputs_and_bad_window_are_refused():
    loss = GroundingHead(in_channels=4, window=2)
    ids = torch.tensor([[-1, -1, 3, 4, 9]])
    with pytest.raises(ValueError, match='window must be at least 1'):
        GroundingHead(in_channels=4, window=0)
    with pytest.raises(ValueError, match='2 position groups, 1 coverage groups'):
        loss(torch.zeros(1, 5, 4), ids, [torch.tensor([4])] * 2, [torch.zeros(1, 2)])
    with pytest.raises(ValueError, match=r'coverage of shape \(1, 3\) for 1 targets and 2 image'):
        loss(torch.zeros(1, 5, 4), ids, [torch.tensor([4])], [torch.zeros(1, 3)])


def test_pixellm_passes_its_image_slots_targets_and_their_coverage():
    model = build_tiny(aux_heads=[dict(type='GroundingHead')])
    data = make_batch(model)  # 2, 0 and 1 targets
    # Sample 0: original 40 x 50, resized exactly 2x to 80 x 100; one block mask per target.
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, :10, :25] = True
    masks[1, 22:40, 30:41] = True
    data['data_samples'][0].gt_instances.masks = masks
    seen = {}
    forward = model.aux_heads[0].forward

    def spy(*args):
        seen['args'] = args
        return forward(*args)

    model.aux_heads[0].forward = spy
    model(**data, mode='loss')
    hidden, ids, first, coverage, ignore = seen['args']
    grid = model.llm_image_grid
    size = data['inputs'].shape[-1]
    seg0 = model.codebook.token_ids[0]
    for row, starts, cov, n in zip(ids, first, coverage, (2, 0, 1)):
        slots = torch.nonzero(row == -1).flatten()
        assert len(slots) == grid * grid and torch.all(slots.diff() == 1)
        assert starts.shape == (n, ) and all(row[p] == seg0 for p in starts.tolist())
        assert cov.shape == (n, grid * grid)
    assert seg0 in ignore.tolist() and model.pad_token_id in ignore.tolist()
    up = np.kron(masks.numpy(), np.ones((1, 2, 2)))
    padded = np.zeros((2, size, size))
    padded[:, :80, :100] = up
    cell = size // grid
    want = padded.reshape(2, grid, cell, grid, cell).mean((2, 4)).reshape(2, -1)
    np.testing.assert_allclose(coverage[0].numpy(), want, atol=1e-6)


def test_pixellm_adds_the_term_and_it_trains_the_llm():
    assert len(build_tiny().aux_heads) == 0
    model = build_tiny(aux_heads=[dict(type='GroundingHead', window=4)])
    # The width comes from the model.
    assert model.aux_heads[0].query.in_features == model.llm.hidden_size
    data = make_batch(model, targets=(2, 1))
    value = model(**data, mode='loss')['loss_grounding']
    # Before training the scores are near uniform over the image tokens: the cross-entropy is
    # about log(number of tokens) (the targets' own entropy is smaller).
    assert abs(value.item() - math.log(model.llm_image_grid ** 2)) < 1.0
    assert_trains_llm_not_decoder(model, value)


def test_the_states_learn_to_point_at_their_target():
    """With the projections frozen, the loss can only fall if the LLM moves its states."""
    model = build_tiny(aux_heads=[dict(type='GroundingHead', window=4)])
    model.aux_heads[0].requires_grad_(False)
    data = make_batch(model, targets=(2, 1))
    # One block per target (random masks would cover every cell about equally).
    for sample in data['data_samples']:
        masks = torch.zeros_like(sample.gt_instances.masks)
        h, w = masks.shape[1:]
        for k in range(len(masks)):
            masks[k, k * h // 2:(k + 1) * h // 2, :w // 3] = True
        sample.gt_instances.masks = masks
    params = [p for p in model.llm.parameters() if p.requires_grad]
    params += list(model.projector.parameters())
    first, last = fit_loss_term(model, data, 'loss_grounding', params)
    assert last < 0.75 * first
