"""Losses of PixelLM: LM cross-entropy, per-target mask BCE and Dice, target refinement, and the
auxiliary codebook context and grounding losses (not in the paper; for LLMs trained from random
weights)."""
from .codebook_context_loss import CodebookContextLoss
from .cross_entropy_loss import LMCrossEntropyLoss
from .dice_loss import MaskDiceLoss
from .grounding_loss import GroundingLoss
from .mask_bce_loss import MaskBCELoss
from .target_refinement_loss import TargetRefinementLoss

__all__ = ['CodebookContextLoss', 'GroundingLoss', 'LMCrossEntropyLoss', 'MaskBCELoss',
           'MaskDiceLoss', 'TargetRefinementLoss']
