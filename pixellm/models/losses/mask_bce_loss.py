"""Per-target sigmoid BCE on predicted mask logits, and the helpers every mask loss shares.

The shared helpers check the per-question ``(pred_logits, gt_masks)`` pairs and reduce per-mask
losses the way PixelLM does: summed over every target in the batch, divided by the target count.
"""
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pixellm.registry import MODELS

# The official code divides by ``num_masks + 1e-8``; keep the same guard so values match it.
NUM_MASKS_EPS = 1e-8


def check_mask_pairs(pred_logits: Sequence[Tensor],
                     gt_masks: Sequence[Tensor]) -> List[Tuple[Tensor, Tensor]]:
    """Validate per-question predictions and targets and return them as float32 pairs.

    Args:
        pred_logits (Sequence[Tensor]): One ``(n_i, H_i, W_i)`` logit tensor per question.
        gt_masks (Sequence[Tensor]): One ``(n_i, H_i, W_i)`` {0, 1} tensor per question, any
            dtype (bool and uint8 are cast).

    Returns:
        list[tuple[Tensor, Tensor]]: ``(logits, targets)`` per question, both float32 on the
        logits' device.

    Raises:
        TypeError: If either argument is a bare tensor instead of a per-question sequence.
        ValueError: If the sequences differ in length, a prediction is not 3-D, or a
            prediction and its target differ in shape (the message names the question index).
    """
    for name, value in (('pred_logits', pred_logits), ('gt_masks', gt_masks)):
        if isinstance(value, Tensor):
            raise TypeError(f'{name} must be a list with one (n_i, H, W) tensor per question, '
                            f'got a single tensor of shape {tuple(value.shape)}; wrap it in a '
                            f'list if it holds the targets of one question.')
    if len(pred_logits) != len(gt_masks):
        raise ValueError(f'pred_logits has {len(pred_logits)} questions but gt_masks has '
                         f'{len(gt_masks)}.')
    pairs = []
    for idx, (pred, gt) in enumerate(zip(pred_logits, gt_masks)):
        if pred.dim() != 3:
            raise ValueError(f'question {idx}: pred_logits must be (n, H, W), got shape '
                             f'{tuple(pred.shape)}.')
        if tuple(pred.shape) != tuple(gt.shape):
            raise ValueError(f'question {idx}: pred_logits has shape {tuple(pred.shape)} but '
                             f'gt_masks has shape {tuple(gt.shape)}; resize the predictions to '
                             f'the ground-truth size before the loss.')
        # float32 because a pixel mean over ~1e6 values in bf16 loses most of its precision.
        pairs.append((pred.float(), gt.to(device=pred.device, dtype=torch.float32)))
    return pairs


def zero_loss(pred_logits: Sequence[Tensor]) -> Tensor:
    """A zero loss still connected to every prediction, so backward and DDP see all parameters.

    Args:
        pred_logits (Sequence[Tensor]): The predictions of the batch (may hold no element).

    Returns:
        Tensor: A float32 scalar zero; detached only when ``pred_logits`` is empty.
    """
    if len(pred_logits) == 0:
        return torch.zeros(())
    return sum(pred.float().sum() for pred in pred_logits) * 0.0


def reduce_mask_losses(pred_logits: Sequence[Tensor], gt_masks: Sequence[Tensor],
                       per_mask_loss: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Sum a per-mask loss over every target of every question and divide by the target count.

    Args:
        pred_logits (Sequence[Tensor]): One ``(n_i, H_i, W_i)`` logit tensor per question.
        gt_masks (Sequence[Tensor]): One ``(n_i, H_i, W_i)`` {0, 1} tensor per question.
        per_mask_loss (Callable): Maps one question's float32 ``(logits, targets)`` to a
            ``(n_i,)`` tensor of per-mask losses; it sees all masks of the question at once so
            that question-level terms (target overlap) can be computed.

    Returns:
        Tensor: Scalar ``sum(per-mask losses) / (num_masks + 1e-8)``, or a graph-connected zero
        when the batch has no target.
    """
    pairs = check_mask_pairs(pred_logits, gt_masks)
    num_masks = sum(pred.shape[0] for pred, _ in pairs)
    if num_masks == 0:
        return zero_loss(pred_logits)
    total = sum(per_mask_loss(pred, gt).sum() for pred, gt in pairs if pred.shape[0] > 0)
    return total / (num_masks + NUM_MASKS_EPS)


def sigmoid_bce_per_mask(logits: Tensor, targets: Tensor) -> Tensor:
    """Sigmoid BCE averaged over the pixels of each mask.

    Args:
        logits (Tensor): ``(n, H, W)`` float logits.
        targets (Tensor): ``(n, H, W)`` float {0, 1} targets.

    Returns:
        Tensor: ``(n,)`` per-mask losses.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    return loss.flatten(1).mean(1)


@MODELS.register_module()
class MaskBCELoss(nn.Module):
    """Per-target sigmoid binary cross-entropy on mask logits (PixelLM's ``mask_bce_loss``).

    Each target mask gets the BCE averaged over its pixels; the batch loss is the sum over all
    targets of all questions divided by the number of targets, as in the official
    ``sigmoid_ce_loss`` aggregation.

    Args:
        loss_weight (float): Multiplier of the loss. Defaults to 2.0 (official ``bce_loss_weight``).
        loss_name (str): Key of the loss in the model's loss dict; mmengine sums keys that start
            with ``loss``. Defaults to ``'loss_mask_bce'``.
    """

    def __init__(self, loss_weight: float = 2.0, loss_name: str = 'loss_mask_bce') -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.loss_name = loss_name

    def forward(self, pred_logits: Sequence[Tensor], gt_masks: Sequence[Tensor]) -> Tensor:
        """Compute the weighted BCE loss.

        Args:
            pred_logits (Sequence[Tensor]): One ``(n_i, H, W)`` logit tensor per question,
                already resized to the ground-truth size.
            gt_masks (Sequence[Tensor]): One ``(n_i, H, W)`` {0, 1} mask tensor per question.

        Returns:
            Tensor: Scalar float32 loss.
        """
        return self.loss_weight * reduce_mask_losses(pred_logits, gt_masks, sigmoid_bce_per_mask)

    def extra_repr(self) -> str:
        return f'loss_weight={self.loss_weight}, loss_name={self.loss_name!r}'
