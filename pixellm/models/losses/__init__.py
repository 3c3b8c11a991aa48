"""Losses of PixelLM: LM cross-entropy, per-target mask BCE and Dice, and target refinement."""
from .cross_entropy_loss import LMCrossEntropyLoss
from .dice_loss import MaskDiceLoss
from .mask_bce_loss import MaskBCELoss
from .target_refinement_loss import TargetRefinementLoss

__all__ = ['LMCrossEntropyLoss', 'MaskBCELoss', 'MaskDiceLoss', 'TargetRefinementLoss']
