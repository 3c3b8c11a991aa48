"""An auxiliary head, not in the PixelLM paper: each codebook state names the words before it.

PixelLM reads a target's mask from the LLM hidden states at its codebook tokens. A pretrained
LLM (LLaVA) already carries the preceding words -- "the red circle" before the tokens -- into
those states. A randomly initialised LLM does not: the states that emit codebook tokens are all
pushed by the text loss towards "predict the next codebook token", so they look alike for every
target, the pixel decoder cannot tell the targets apart, and it settles on one mask for all of
them; only the mask loss can teach the LLM to carry the target into the states, and it gives no
signal while the decoder ignores them. This head gives that signal from the text alone: a linear
head on every codebook state predicts each of the ``window`` tokens written just before the
target's codebook tokens (a bag of words, so order does not matter). No label beyond the answer
text is used, and inference does not run the head (its weights are in the checkpoints, so a
checkpoint loads with the ``aux_heads`` it was trained with).

The window counts tokens, whatever they are: with the shipped tiny tokenizer, "the red circle
[SEG0] ..." puts a space token before ``[SEG0]``, so the 4 context tokens are the space,
"circle", "red" and "the"; the space and "the" are the same for every target.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixellm.models import BaseAuxHead
from pixellm.registry import MODELS


def preceding_window(input_ids: Tensor, first_positions: Tensor, window: int,
                     ignore_ids: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """The ``window`` positions just before each target, their ids and which of them to use.

    Args:
        input_ids (Tensor): ``(L,)`` ids of one sequence; negative ids (image slots) are skipped.
        first_positions (Tensor): ``(N,)`` position of each target's first codebook token.
        window (int): How many positions to look back.
        ignore_ids (Tensor, optional): Ids never used (the codebook tokens, padding).

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``(N, window)`` positions, nearest first, clamped to 0
        so that they index the sequence; the ids there; and ``keep``, false at a position before
        the sequence start, an image slot or an ignored id.
    """
    offsets = torch.arange(1, window + 1, device=input_ids.device)
    pos = first_positions[:, None].to(input_ids.device) - offsets
    inside = pos >= 0
    pos = pos.clamp(min=0)
    ids = input_ids[pos]
    keep = inside & (ids >= 0)
    if ignore_ids is not None and ignore_ids.numel():
        keep &= ~torch.isin(ids, ignore_ids.to(ids.device))
    return pos, ids, keep


def preceding_tokens(input_ids: Tensor, first_positions: Tensor, window: int,
                     ignore_ids: Optional[Tensor] = None) -> Tensor:
    """The ``window`` token ids just before each target, ``-1`` where there is none to use.

    Args:
        input_ids (Tensor): ``(L,)`` ids of one sequence; negative ids (image slots) are skipped.
        first_positions (Tensor): ``(N,)`` position of each target's first codebook token.
        window (int): How many positions to look back.
        ignore_ids (Tensor, optional): Ids never used as context (the codebook tokens, padding).

    Returns:
        Tensor: ``(N, window)`` ids, nearest first; ``-1`` marks a position before the sequence
        start, an image slot or an ignored id.
    """
    _, ids, keep = preceding_window(input_ids, first_positions, window, ignore_ids)
    return torch.where(keep, ids, torch.full_like(ids, -1))


@MODELS.register_module()
class CodebookContextHead(BaseAuxHead):
    """Cross-entropy of a linear head on the codebook states against the words before the target.

    For a target whose codebook tokens start at position ``p``, the context is the tokens at
    ``p - 1 ... p - window`` that are text (not an image slot, a codebook token or an ignored id).
    Each of the target's ``num_scales * tokens_per_scale`` states is scored against each context
    token; the loss is the mean cross-entropy over all (state, context token) pairs of the batch.
    A target with no context token adds nothing; a batch without any gives a zero that is still
    connected to the head and the states (DDP and sharded runs see every parameter used).

    Args:
        in_channels (int): Width of the codebook states (the LLM width; PixelLM fills it in).
        vocab_size (int): Tokenizer size including added tokens (PixelLM fills it in).
        window (int): Tokens looked back from the target's first codebook token. Defaults to 4.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        loss_name (str): Key in the model's loss dict. Defaults to ``'loss_codebook_context'``.
    """

    def __init__(self, in_channels: int, vocab_size: int, window: int = 4,
                 loss_weight: float = 1.0, loss_name: str = 'loss_codebook_context') -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f'window must be at least 1, got {window}')
        self.head = nn.Linear(in_channels, vocab_size)
        self.window = window
        self.loss_weight = loss_weight
        self.loss_name = loss_name

    def loss(self, outputs: Dict, data_samples: Sequence) -> Dict[str, Tensor]:
        """The loss of a batch from PixelLM's teacher-forced outputs (``BaseAuxHead.loss``).

        Args:
            outputs (dict): ``codebook_states``, ``input_ids``, ``codebook_positions`` and
                ``non_text_ids`` of ``PixelLM``'s training step.
            data_samples (Sequence): The batch's samples (not read).

        Returns:
            dict[str, Tensor]: ``{loss_name: loss}``.
        """
        first = [p[:, 0] for p in outputs['codebook_positions']]
        return {self.loss_name: self(outputs['codebook_states'], outputs['input_ids'], first,
                                     outputs['non_text_ids'])}

    def forward(self, states: Sequence[Tensor], input_ids: Tensor,
                first_positions: Sequence[Tensor], ignore_ids: Optional[Tensor] = None) -> Tensor:
        """Compute the loss.

        Args:
            states (Sequence[Tensor]): Per sequence, ``(N_i, num_scales, tokens_per_scale, C)``
                codebook states (``SegCodebook.gather``).
            input_ids (Tensor): ``(B, L)`` ids aligned with the states' sequence.
            first_positions (Sequence[Tensor]): Per sequence, ``(N_i,)`` positions of each
                target's first codebook token.
            ignore_ids (Tensor, optional): Ids never used as context.

        Returns:
            Tensor: Scalar float32 loss.
        """
        if not (len(states) == len(first_positions) == input_ids.shape[0]):
            raise ValueError(f'{len(states)} state groups, {len(first_positions)} position '
                             f'groups and {input_ids.shape[0]} sequences do not match')
        flat, context = [], []
        for seq_states, ids, first in zip(states, input_ids, first_positions):
            if seq_states.shape[0] != first.shape[0]:
                raise ValueError(f'{seq_states.shape[0]} targets of states but '
                                 f'{first.shape[0]} first positions')
            n, scales, tokens, width = seq_states.shape
            flat.append(seq_states.reshape(n, scales * tokens, width))
            context.append(preceding_tokens(ids, first, self.window, ignore_ids))
        x, ctx = torch.cat(flat), torch.cat(context)
        # The head runs on every call, also on zero rows, so every rank makes the same calls;
        # its output (even empty) ties the zero below to the head's weight and bias.
        log_probs = F.log_softmax(self.head(x.to(self.head.weight.dtype)).float(), dim=-1)
        valid = ctx >= 0
        if not bool(valid.any()):
            return log_probs.sum() * 0.0
        # (N, slots, V) gathered at the (N, window) context ids -> (N, slots, window).
        index = ctx.clamp(min=0)[:, None, :].expand(-1, log_probs.shape[1], -1)
        picked = log_probs.gather(-1, index)
        weight = valid[:, None, :].expand_as(picked).to(picked.dtype)
        return self.loss_weight * -(picked * weight).sum() / weight.sum()

    def step_flops(self, batch: int, num_targets: int, image_tokens: int,
                   codebook_tokens: int) -> Dict[str, float]:
        """FLOPs of one training step (for ``tools/analysis/benchmark.py``): the ``Linear`` on
        every codebook state, forward and backward (input and, when trained, weight gradients).

        Args:
            batch (int): Sequences in the step (not used: the head reads targets only).
            num_targets (int): Targets in the step.
            image_tokens (int): Image tokens per sequence (not used).
            codebook_tokens (int): Codebook tokens per target.

        Returns:
            dict[str, float]: ``context_head``.
        """
        rows = num_targets * codebook_tokens
        passes = 2 + int(self.head.weight.requires_grad)
        return dict(context_head=2.0 * rows * self.head.in_features * self.head.out_features *
                    passes)

    def extra_repr(self) -> str:
        return f'window={self.window}, loss_weight={self.loss_weight}, loss_name={self.loss_name!r}'
