"""Next-token cross-entropy of the language model on the answer tokens."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from pixellm.registry import MODELS
from pixellm.utils.constants import IGNORE_INDEX


@MODELS.register_module()
class LMCrossEntropyLoss(nn.Module):
    """Causal-LM cross-entropy: the logit at position ``t`` predicts the label at ``t + 1``.

    The mean is over the labels that are not ``ignore_index`` (the prompt, image and padding
    positions), as in Hugging Face's ``ForCausalLMLoss`` that the official code relies on.
    A batch with no supervised token gives a zero that stays connected to the logits, so
    backward and DDP still see every parameter.

    Args:
        loss_weight (float): Multiplier of the loss. Defaults to 1.0 (official
            ``ce_loss_weight``).
        ignore_index (int): Label value that is not supervised. Defaults to -100.
        loss_name (str): Key of the loss in the model's loss dict. Defaults to ``'loss_ce'``.
    """

    def __init__(self, loss_weight: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 loss_name: str = 'loss_ce') -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.ignore_index = ignore_index
        self.loss_name = loss_name

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Compute the weighted next-token cross-entropy.

        Args:
            logits (Tensor): ``(B, L, V)`` LM-head outputs.
            labels (Tensor): ``(B, L)`` token ids, ``ignore_index`` where not supervised;
                not shifted (the loss shifts them).

        Returns:
            Tensor: Scalar float32 loss.

        Raises:
            ValueError: If ``logits`` is not 3-D or its first two sizes differ from ``labels``.
        """
        if logits.dim() != 3 or labels.dim() != 2 or tuple(logits.shape[:2]) != tuple(
                labels.shape):
            raise ValueError(f'logits must be (B, L, V) and labels (B, L) with the same B and L, '
                             f'got logits {tuple(logits.shape)} and labels '
                             f'{tuple(labels.shape)}.')
        # float32 because softmax over a 32k vocabulary in bf16 is visibly off.
        shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
        shift_labels = labels[:, 1:].reshape(-1).to(device=logits.device, dtype=torch.long)
        num_tokens = int((shift_labels != self.ignore_index).sum())
        if num_tokens == 0:
            return logits.float().sum() * 0.0
        loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=self.ignore_index,
                               reduction='sum') / num_tokens
        return self.loss_weight * loss

    def extra_repr(self) -> str:
        return (f'loss_weight={self.loss_weight}, ignore_index={self.ignore_index}, '
                f'loss_name={self.loss_name!r}')
