"""PixelLM's target refinement loss: BCE that stresses pixels claimed by several targets.

When a question has several targets, the model tends to predict the same pixels for more than
one of them. The paper's target refinement loss raises the BCE weight of those pixels so the
targets are pushed apart.
"""
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pixellm.registry import MODELS

from .mask_bce_loss import (check_mask_pairs, reduce_mask_losses, sigmoid_bce_per_mask,
                            zero_loss)

MODES = ('overlap', 'official_overlap')


def predicted_overlap(logits: Tensor) -> Tensor:
    """Pixels that at least two targets of one question predict as foreground.

    Args:
        logits (Tensor): ``(n, H, W)`` logits of the targets of one question.

    Returns:
        Tensor: ``(H, W)`` bool map; computed on detached logits because the region only
        selects pixels and must not itself receive gradient.
    """
    return (logits.detach() > 0).sum(0) >= 2


def refinement_bce_per_mask(logits: Tensor, targets: Tensor, alpha: float) -> Tensor:
    """BCE per mask with weight ``alpha`` on the predicted-overlap pixels and 1 elsewhere.

    Args:
        logits (Tensor): ``(n, H, W)`` logits of the targets of one question.
        targets (Tensor): ``(n, H, W)`` float {0, 1} targets.
        alpha (float): Weight of the overlap pixels.

    Returns:
        Tensor: ``(n,)`` per-mask losses averaged over all pixels.
    """
    overlap = predicted_overlap(logits)
    weight = torch.where(overlap, alpha, 1.0).to(logits.dtype).expand_as(logits)
    loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction='none')
    return loss.flatten(1).mean(1)


def overlap_only_bce_per_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """BCE restricted to the predicted-overlap pixels, as the official ``overlap_loss``.

    The official code averages over all pixels (not over the overlap pixels), so a question
    with a small overlap gets a small term.

    Args:
        logits (Tensor): ``(n, H, W)`` logits of the targets of one question.
        targets (Tensor): ``(n, H, W)`` float {0, 1} targets.

    Returns:
        Tensor: ``(n,)`` per-mask losses.
    """
    weight = predicted_overlap(logits).to(logits.dtype).expand_as(logits)
    loss = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction='none')
    return loss.flatten(1).mean(1)


@MODELS.register_module()
class TargetRefinementLoss(nn.Module):
    """Target refinement loss of PixelLM (paper Sec. 3), switchable for ablations.

    Modes:

    - ``'overlap'`` (the paper's loss): a per-pixel weighted sigmoid BCE where the pixels that
      two or more targets of the same question predict as foreground (logit > 0, detached) get
      weight ``alpha`` and all others 1; averaged over pixels per mask, then summed over targets
      and divided by the target count like :class:`MaskBCELoss`. It **replaces** the plain BCE
      term: configure it instead of ``MaskBCELoss``, not next to it. With ``alpha=1``, or on a
      question with one target, it equals ``MaskBCELoss``. ``enabled=False`` returns plain BCE,
      so the total loss becomes the official one.
    - ``'official_overlap'``: only the term of the official (commented-out) ``overlap_loss``,
      BCE restricted to the predicted-overlap pixels and averaged over all pixels. It is meant
      to be **added** next to ``MaskBCELoss``, as the official code would; ``enabled=False``
      returns a graph-connected zero. ``MaskBCELoss + official_overlap`` equals ``'overlap'``
      with ``alpha=2`` exactly, which is why ``alpha`` defaults to 2.

    In both modes ``enabled=False`` gives the official baseline total loss.

    Args:
        loss_weight (float): Multiplier of the loss. Defaults to 2.0 (official
            ``bce_loss_weight``, which the official overlap term also used).
        alpha (float): Weight of predicted-overlap pixels in ``'overlap'`` mode; unused in
            ``'official_overlap'`` mode. Defaults to 2.0.
        mode (str): ``'overlap'`` or ``'official_overlap'``. Defaults to ``'overlap'``.
        enabled (bool): Whether the refinement is applied. Defaults to True.
        loss_name (str, optional): Key of the loss in the model's loss dict. Defaults to
            ``'loss_mask_refine'`` in ``'overlap'`` mode and ``'loss_mask_overlap'`` in
            ``'official_overlap'`` mode.
    """

    def __init__(self, loss_weight: float = 2.0, alpha: float = 2.0, mode: str = 'overlap',
                 enabled: bool = True, loss_name: Optional[str] = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {mode!r}.')
        if alpha < 0:
            raise ValueError(f'alpha must be non-negative, got {alpha}.')
        self.loss_weight = loss_weight
        self.alpha = alpha
        self.mode = mode
        self.enabled = enabled
        if loss_name is None:
            loss_name = 'loss_mask_refine' if mode == 'overlap' else 'loss_mask_overlap'
        self.loss_name = loss_name

    def forward(self, pred_logits: Sequence[Tensor], gt_masks: Sequence[Tensor]) -> Tensor:
        """Compute the weighted refinement loss.

        Args:
            pred_logits (Sequence[Tensor]): One ``(n_i, H, W)`` logit tensor per question,
                already resized to the ground-truth size; the overlap is computed among the
                ``n_i`` targets of each question only.
            gt_masks (Sequence[Tensor]): One ``(n_i, H, W)`` {0, 1} mask tensor per question.

        Returns:
            Tensor: Scalar float32 loss.
        """
        if self.mode == 'overlap':
            if self.enabled:
                per_mask = partial(refinement_bce_per_mask, alpha=self.alpha)
            else:
                per_mask = sigmoid_bce_per_mask
            return self.loss_weight * reduce_mask_losses(pred_logits, gt_masks, per_mask)
        if not self.enabled:
            # Still validate the inputs so a switched-off run fails on the same bad batch.
            check_mask_pairs(pred_logits, gt_masks)
            return zero_loss(pred_logits)
        return self.loss_weight * reduce_mask_losses(pred_logits, gt_masks,
                                                     overlap_only_bce_per_mask)

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, alpha={self.alpha}, mode={self.mode!r}, '
                f'enabled={self.enabled}, loss_name={self.loss_name!r}')
