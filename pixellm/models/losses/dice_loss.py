"""Per-target Dice loss on mask logits, with PixelLM's down-scaled sums."""
from functools import partial
from typing import Sequence

import torch.nn as nn
from torch import Tensor

from pixellm.registry import MODELS

from .mask_bce_loss import reduce_mask_losses


def dice_per_mask(logits: Tensor, targets: Tensor, scale: float, eps: float) -> Tensor:
    """Dice loss of each mask, with the sums divided by ``scale`` as in the official code.

    Args:
        logits (Tensor): ``(n, H, W)`` float logits.
        targets (Tensor): ``(n, H, W)`` float {0, 1} targets.
        scale (float): Divisor applied to probabilities and targets before summing.
        eps (float): Smoothing added to numerator and denominator.

    Returns:
        Tensor: ``(n,)`` per-mask losses ``1 - (2|p t| + eps) / (|p| + |t| + eps)``.
    """
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs / scale * targets).sum(-1)
    denominator = (probs / scale).sum(-1) + (targets / scale).sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


@MODELS.register_module()
class MaskDiceLoss(nn.Module):
    """Per-target Dice loss (PixelLM's ``mask_dice_loss``).

    Dividing the sums by ``scale`` makes ``eps`` ``scale`` times stronger relative to the mask
    areas, which changes the value only for (nearly) empty masks; it is the official behaviour,
    kept so that losses match the reference. Aggregation over targets is the same as
    :class:`MaskBCELoss`.

    Args:
        loss_weight (float): Multiplier of the loss. Defaults to 0.5 (official
            ``dice_loss_weight``).
        scale (float): Divisor of the pixel sums. Defaults to 1000.
        eps (float): Smoothing term. Defaults to 1e-6.
        loss_name (str): Key of the loss in the model's loss dict. Defaults to
            ``'loss_mask_dice'``.
    """

    def __init__(self, loss_weight: float = 0.5, scale: float = 1000, eps: float = 1e-6,
                 loss_name: str = 'loss_mask_dice') -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f'scale must be positive, got {scale}.')
        self.loss_weight = loss_weight
        self.scale = scale
        self.eps = eps
        self.loss_name = loss_name

    def forward(self, pred_logits: Sequence[Tensor], gt_masks: Sequence[Tensor]) -> Tensor:
        """Compute the weighted Dice loss.

        Args:
            pred_logits (Sequence[Tensor]): One ``(n_i, H, W)`` logit tensor per question,
                already resized to the ground-truth size.
            gt_masks (Sequence[Tensor]): One ``(n_i, H, W)`` {0, 1} mask tensor per question.

        Returns:
            Tensor: Scalar float32 loss.
        """
        per_mask = partial(dice_per_mask, scale=self.scale, eps=self.eps)
        return self.loss_weight * reduce_mask_losses(pred_logits, gt_masks, per_mask)

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, scale={self.scale}, eps={self.eps}, '
                f'loss_name={self.loss_name!r}')
