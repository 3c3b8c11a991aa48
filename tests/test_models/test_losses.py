"""Mask, refinement and LM losses checked against independent numpy / by-hand computations."""
import math

import numpy as np
import pytest
import torch

from pixellm.models.losses import (LMCrossEntropyLoss, MaskBCELoss, MaskDiceLoss,
                                   TargetRefinementLoss)
from pixellm.registry import MODELS


def softplus(z):
    return math.log1p(math.exp(z))


def np_bce(x, t):
    # Numerically stable BCE-with-logits, written independently of torch.
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def make_batch(seed=0, shapes=((2, 3, 4), (1, 5, 2), (3, 4, 4))):
    """Random per-question logits (with forced overlaps) and {0, 1} float targets."""
    rng = np.random.default_rng(seed)
    logits, gts = [], []
    for shape in shapes:
        x = rng.normal(scale=3.0, size=shape)
        # Every target of a question claims pixel (0, 0), so multi-target questions overlap.
        x[:, 0, 0] = 4.0
        logits.append(x)
        gts.append((rng.random(shape) > 0.5).astype(np.float64))
    return logits, gts


def to_torch(logits, gts, requires_grad=False):
    preds = [torch.tensor(x, dtype=torch.float32, requires_grad=requires_grad) for x in logits]
    return preds, [torch.tensor(t, dtype=torch.float32) for t in gts]


ALL_MASK_LOSSES = [
    lambda: MaskBCELoss(),
    lambda: MaskDiceLoss(),
    lambda: TargetRefinementLoss(),
    lambda: TargetRefinementLoss(mode='official_overlap'),
]
MASK_LOSS_IDS = ['bce', 'dice', 'refine', 'official_overlap']


def test_mask_bce_matches_numpy():
    logits, gts = make_batch()
    per_mask = [np_bce(x, t).reshape(x.shape[0], -1).mean(1) for x, t in zip(logits, gts)]
    num_masks = sum(x.shape[0] for x in logits)
    expected = 2.0 * np.concatenate(per_mask).sum() / (num_masks + 1e-8)
    loss = MaskBCELoss()(*to_torch(logits, gts))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert MaskBCELoss(loss_weight=1.0)(*to_torch(logits, gts)).item() == pytest.approx(
        expected / 2, rel=1e-5)


def test_mask_bce_by_hand():
    # One mask of two pixels: logit 0 on a foreground pixel, logit 2 on a background pixel.
    loss = MaskBCELoss(loss_weight=1.0)([torch.tensor([[[0.0, 2.0]]])],
                                        [torch.tensor([[[1, 0]]])])
    assert loss.item() == pytest.approx((math.log(2) + softplus(2)) / 2, rel=1e-6)


@pytest.mark.parametrize('scale', [1000, 1])
def test_mask_dice_matches_numpy_with_scale(scale):
    logits, gts = make_batch(seed=1)
    # An empty target is where scale changes the value most.
    gts[0][1] = 0
    eps = 1e-6
    per_mask = []
    for x, t in zip(logits, gts):
        p = np_sigmoid(x).reshape(x.shape[0], -1)
        t = t.reshape(t.shape[0], -1)
        num = 2 * (p / scale * t).sum(-1)
        den = (p / scale).sum(-1) + (t / scale).sum(-1)
        per_mask.append(1 - (num + eps) / (den + eps))
    expected = 0.5 * np.concatenate(per_mask).sum() / (6 + 1e-8)
    loss = MaskDiceLoss(scale=scale)(*to_torch(logits, gts))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_mask_dice_scale_matters_for_empty_masks():
    # Empty target, near-empty prediction: the sums are tiny, so dividing them by scale lets
    # eps dominate (loss near 0.15) while scale=1 leaves the loss near 1.
    pred = [torch.full((1, 2, 2), -10.0)]
    gt = [torch.zeros(1, 2, 2)]
    prob_sum = 4 / (1 + math.exp(10))
    for scale in (1000, 1):
        expected = 1 - 1e-6 / (prob_sum / scale + 1e-6)
        loss = MaskDiceLoss(loss_weight=1.0, scale=scale)(pred, gt)
        assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert MaskDiceLoss(scale=1000)(pred, gt).item() < 0.1
    assert MaskDiceLoss(scale=1)(pred, gt).item() > 0.49


def crafted_refinement_batch():
    """Question 0: two targets predicted foreground together on pixel 0 only.

    Question 1: one target, foreground everywhere, same size, so a loss that mixed questions
    would see an overlap on every pixel.
    """
    preds = [torch.tensor([[[2.0, 1.0, -1.0]], [[1.0, -2.0, 3.0]]], requires_grad=True),
             torch.tensor([[[5.0, 5.0, 5.0]]], requires_grad=True)]
    gts = [torch.tensor([[[1, 1, 0]], [[0, 0, 1]]], dtype=torch.uint8),
           torch.tensor([[[1, 0, 1]]], dtype=torch.uint8)]
    return preds, gts


def test_target_refinement_by_hand():
    preds, gts = crafted_refinement_batch()
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x); pixel 0 of question 0 has weight 2.
    mask_a = (2 * softplus(-2) + softplus(-1) + softplus(-1)) / 3
    mask_b = (2 * softplus(1) + softplus(-2) + softplus(-3)) / 3
    mask_c = (softplus(-5) + softplus(5) + softplus(-5)) / 3
    expected = 2.0 * (mask_a + mask_b + mask_c) / 3
    loss = TargetRefinementLoss(alpha=2.0)(preds, gts)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = 2.0 * ((softplus(-2) + 2 * softplus(-1)) / 3 +
                   (softplus(1) + softplus(-2) + softplus(-3)) / 3 + mask_c) / 3
    assert MaskBCELoss()(preds, gts).item() == pytest.approx(plain, rel=1e-6)
    assert loss.item() > plain


def test_target_refinement_official_overlap_by_hand():
    preds, gts = crafted_refinement_batch()
    # Only pixel 0 of question 0 counts, still averaged over all 3 pixels; 3 targets in all.
    expected = 2.0 * (softplus(-2) / 3 + softplus(1) / 3 + 0.0) / 3
    loss = TargetRefinementLoss(mode='official_overlap')(preds, gts)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_official_overlap_plus_bce_equals_overlap_alpha_two():
    logits, gts = make_batch(seed=2)
    bce = MaskBCELoss()(*to_torch(logits, gts))
    extra = TargetRefinementLoss(mode='official_overlap')(*to_torch(logits, gts))
    refined = TargetRefinementLoss(alpha=2.0)(*to_torch(logits, gts))
    assert extra.item() > 0
    assert (bce + extra).item() == pytest.approx(refined.item(), rel=1e-5)


def test_target_refinement_alpha_one_equals_bce():
    logits, gts = make_batch(seed=3)
    bce = MaskBCELoss()(*to_torch(logits, gts))
    refined = TargetRefinementLoss(alpha=1.0)(*to_torch(logits, gts))
    assert torch.equal(bce, refined)


def test_target_refinement_single_target_questions_equal_bce():
    logits, gts = make_batch(seed=4, shapes=((1, 4, 4), (1, 3, 5)))
    bce = MaskBCELoss()(*to_torch(logits, gts))
    refined = TargetRefinementLoss(alpha=5.0)(*to_torch(logits, gts))
    assert refined.item() == pytest.approx(bce.item(), rel=1e-6)
    assert TargetRefinementLoss(mode='official_overlap')(*to_torch(logits, gts)).item() == 0


def test_target_refinement_switch():
    logits, gts = make_batch(seed=5)
    bce = MaskBCELoss()(*to_torch(logits, gts))
    on = TargetRefinementLoss(alpha=3.0)(*to_torch(logits, gts))
    off = TargetRefinementLoss(alpha=3.0, enabled=False)(*to_torch(logits, gts))
    assert on.item() > bce.item()
    assert torch.equal(off, bce)
    preds, gt = to_torch(logits, gts, requires_grad=True)
    off_extra = TargetRefinementLoss(mode='official_overlap', enabled=False)(preds, gt)
    assert off_extra.item() == 0 and off_extra.requires_grad
    with pytest.raises(ValueError, match='mode'):
        TargetRefinementLoss(mode='gt_overlap')


def test_target_refinement_gradient_is_weighted_bce_gradient():
    preds, gts = crafted_refinement_batch()
    TargetRefinementLoss(alpha=3.0, loss_weight=1.0)(preds, gts).backward()
    x = preds[0].detach().numpy()
    t = gts[0].numpy().astype(np.float64)
    weight = np.array([3.0, 1.0, 1.0])  # the overlap region gets no gradient of its own
    expected = weight * (np_sigmoid(x) - t) / 3 / 3  # mean over 3 pixels, 3 targets
    np.testing.assert_allclose(preds[0].grad.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('build', ALL_MASK_LOSSES, ids=MASK_LOSS_IDS)
def test_mask_losses_zero_targets_stay_connected(build):
    pred = torch.randn(0, 4, 4, requires_grad=True)
    other = torch.randn(0, 2, 2, requires_grad=True)
    loss = build()([pred, other], [torch.zeros(0, 4, 4), torch.zeros(0, 2, 2, dtype=torch.bool)])
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert pred.grad is not None and pred.grad.shape == pred.shape
    assert build()([], []).item() == 0


@pytest.mark.parametrize('build', ALL_MASK_LOSSES, ids=MASK_LOSS_IDS)
def test_mask_losses_shape_mismatch_names_question(build):
    preds = [torch.zeros(1, 3, 3), torch.zeros(2, 3, 3)]
    gts = [torch.zeros(1, 3, 3), torch.zeros(2, 4, 4)]
    with pytest.raises(ValueError, match=r'question 1: .*\(2, 3, 3\).*\(2, 4, 4\)'):
        build()(preds, gts)
    with pytest.raises(ValueError, match='2 questions but gt_masks has 1'):
        build()(preds, gts[:1])
    with pytest.raises(TypeError, match='one \\(n_i, H, W\\) tensor per question'):
        build()(torch.zeros(1, 3, 3), torch.zeros(1, 3, 3))


@pytest.mark.parametrize('build', ALL_MASK_LOSSES, ids=MASK_LOSS_IDS)
def test_mask_losses_cast_bool_and_uint8_targets(build):
    logits, gts = make_batch(seed=6)
    preds, float_gts = to_torch(logits, gts)
    expected = build()(preds, float_gts)
    for dtype in (torch.bool, torch.uint8):
        assert torch.equal(build()(preds, [t.to(dtype) for t in float_gts]), expected)


@pytest.mark.parametrize('build', ALL_MASK_LOSSES, ids=MASK_LOSS_IDS)
def test_mask_losses_gradients_flow(build):
    logits, gts = make_batch(seed=7)
    preds, gt = to_torch(logits, gts, requires_grad=True)
    build()(preds, gt).backward()
    for pred in preds:
        assert torch.isfinite(pred.grad).all()
    # Pixel (0, 0) is a predicted overlap in every multi-target question, so every loss,
    # the overlap-only one included, has gradient there.
    assert preds[0].grad[:, 0, 0].abs().min() > 0


def test_mask_losses_accept_bf16_predictions():
    logits, gts = make_batch(seed=8)
    preds, gt = to_torch(logits, gts)
    reference = TargetRefinementLoss()(preds, gt)
    loss = TargetRefinementLoss()([p.bfloat16() for p in preds], gt)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)


def test_losses_build_from_registry_with_names():
    refine = MODELS.build(dict(type='TargetRefinementLoss', alpha=3.0, enabled=False))
    assert isinstance(refine, TargetRefinementLoss)
    assert (refine.alpha, refine.enabled, refine.loss_weight) == (3.0, False, 2.0)
    names = {
        'MaskBCELoss': ('loss_mask_bce', 2.0),
        'MaskDiceLoss': ('loss_mask_dice', 0.5),
        'TargetRefinementLoss': ('loss_mask_refine', 2.0),
        'LMCrossEntropyLoss': ('loss_ce', 1.0),
    }
    for type_name, (loss_name, weight) in names.items():
        loss = MODELS.build(dict(type=type_name))
        assert (loss.loss_name, loss.loss_weight) == (loss_name, weight)
    assert TargetRefinementLoss(mode='official_overlap').loss_name == 'loss_mask_overlap'
    assert MaskBCELoss(loss_name='loss_bce_x').loss_name == 'loss_bce_x'


def np_lm_ce(logits, labels, ignore_index=-100):
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            label = labels[b, t + 1]
            if label == ignore_index:
                continue
            row = logits[b, t]
            log_z = row.max() + np.log(np.exp(row - row.max()).sum())
            total += log_z - row[label]
            count += 1
    return total / count


def test_lm_cross_entropy_matches_numpy_with_shift():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(2, 5, 7))
    labels = np.array([[3, -100, 2, 6, 0], [-100, -100, 1, 1, -100]])
    loss = LMCrossEntropyLoss()(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels))
    assert loss.item() == pytest.approx(np_lm_ce(logits, labels), rel=1e-5)
    # The first label is never a target of the shifted loss.
    changed = labels.copy()
    changed[:, 0] = 4
    again = LMCrossEntropyLoss(loss_weight=2.0)(torch.tensor(logits, dtype=torch.float32),
                                                torch.tensor(changed))
    assert again.item() == pytest.approx(2 * loss.item(), rel=1e-6)


def test_lm_cross_entropy_no_supervised_token_is_connected_zero():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    labels = torch.tensor([[5, -100, -100, -100], [-100, -100, -100, -100]])
    loss = LMCrossEntropyLoss()(logits, labels)
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_lm_cross_entropy_gradient_and_shape_check():
    logits = torch.randn(1, 4, 6, requires_grad=True)
    LMCrossEntropyLoss()(logits, torch.tensor([[1, 2, 3, 4]])).backward()
    assert logits.grad[0, :3].abs().sum() > 0
    # The last position predicts nothing, so it gets no gradient.
    assert torch.equal(logits.grad[0, 3], torch.zeros(6))
    with pytest.raises(ValueError, match=r'logits \(1, 4, 6\) and labels \(1, 3\)'):
        LMCrossEntropyLoss()(logits, torch.tensor([[1, 2, 3]]))
