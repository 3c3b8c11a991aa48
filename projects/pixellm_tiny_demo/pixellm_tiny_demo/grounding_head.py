"""An auxiliary head, not in the PixelLM paper: the states before a target point at its image.

The tiny demo LLM (random weights) names the right object for referring questions, whose words
are in the question, but often not for questions that need the image ("Segment every diamond.":
the answer must read the colour of each diamond off the image tokens). Linear probes read the
colour and shape from those tokens; the LLM does not learn, within the demo's steps, to look them
up. This head asks for the look-up directly. With the shipped tiny tokenizer, "the red circle
[SEG0] ..." puts " the", " red", " circle" and a space before ``[SEG0]``; the states at those
``window`` positions predict the colour, the shape, the space and the first codebook token. At
each of them a query projection of the LLM's last hidden state scores every image token (a key
projection of its last hidden state), and the softmax over the image tokens is pulled towards
the target's share of each image-token cell (cross-entropy). Positions that are not text of the
answer -- image slots, codebook tokens of an earlier target, padding, before the sequence start
-- are left out, as in ``CodebookContextHead``. Only the ground-truth masks are used; inference
does not run the projections (their weights are in the checkpoints).
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixellm.models import BaseAuxHead
from pixellm.registry import MODELS
from .codebook_context_head import preceding_window


def mask_grid_coverage(masks: Tensor, valid_hw: Tuple[int, int], size: int,
                       grid: int) -> Tensor:
    """Fraction of each image-token cell that each mask covers.

    Args:
        masks (Tensor): ``(n, H, W)`` {0, 1} masks at the original resolution.
        valid_hw (tuple): The resized image's ``(h, w)`` inside the padded ``size x size`` input
            (padding bottom/right).
        size (int): The padded input side.
        grid (int): Side of the LLM's image-token grid.

    Returns:
        Tensor: ``(n, grid * grid)`` coverage in [0, 1], row-major like the image tokens.
    """
    h, w = valid_hw
    resized = F.interpolate(masks[:, None].float(), size=(h, w), mode='area')
    padded = F.pad(resized, (0, size - w, 0, size - h))
    return F.adaptive_avg_pool2d(padded, grid).flatten(1)


@MODELS.register_module()
class GroundingHead(BaseAuxHead):
    """Cross-entropy between the states' image-token scores and the target's mask coverage.

    The loss is the mean over every kept (target, position) pair; a target whose mask covers no
    cell adds nothing. Both projections run on every call, on zero rows if need be, and a batch
    without any pair gives a zero still connected to them and to the states (DDP and sharded runs
    see every parameter used, every rank makes the same calls).

    Args:
        in_channels (int): LLM width (PixelLM fills it in).
        embed_dim (int): Width of the query and key projections. Defaults to 64.
        window (int): Positions looked back from each target's first codebook token. Defaults
            to 4.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        loss_name (str): Key in the model's loss dict. Defaults to ``'loss_grounding'``.
    """

    def __init__(self, in_channels: int, embed_dim: int = 64, window: int = 4,
                 loss_weight: float = 1.0, loss_name: str = 'loss_grounding') -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f'window must be at least 1, got {window}')
        self.query = nn.Linear(in_channels, embed_dim)
        self.key = nn.Linear(in_channels, embed_dim)
        self.window = window
        self.loss_weight = loss_weight
        self.loss_name = loss_name

    def loss(self, outputs: Dict, data_samples: Sequence) -> Dict[str, Tensor]:
        """The loss of a batch from PixelLM's teacher-forced outputs (``BaseAuxHead.loss``).

        Args:
            outputs (dict): ``hidden``, ``input_ids``, ``codebook_positions``, ``gt_masks``,
                ``valid_hw``, ``input_size``, ``llm_image_grid`` and ``non_text_ids`` of
                ``PixelLM``'s training step.
            data_samples (Sequence): The batch's samples (not read).

        Returns:
            dict[str, Tensor]: ``{loss_name: loss}``.
        """
        first = [p[:, 0] for p in outputs['codebook_positions']]
        coverage = [mask_grid_coverage(gt, hw, outputs['input_size'], outputs['llm_image_grid'])
                    for gt, hw in zip(outputs['gt_masks'], outputs['valid_hw'])]
        return {self.loss_name: self(outputs['hidden'], outputs['input_ids'], first, coverage,
                                     outputs['non_text_ids'])}

    def forward(self, hidden: Tensor, input_ids: Tensor, first_positions: Sequence[Tensor],
                coverage: Sequence[Tensor], ignore_ids: Optional[Tensor] = None) -> Tensor:
        """Compute the loss.

        Args:
            hidden (Tensor): ``(B, L, C)`` last hidden states.
            input_ids (Tensor): ``(B, L)`` ids aligned with ``hidden``; image tokens have
                negative ids (PixelLM writes -1), in grid order.
            first_positions (Sequence[Tensor]): Per sequence, ``(N_i,)`` positions of each
                target's first codebook token.
            coverage (Sequence[Tensor]): Per sequence, ``(N_i, G)`` share of each of the ``G``
                image-token cells covered by each target (``mask_grid_coverage``).
            ignore_ids (Tensor, optional): Ids whose positions are left out (codebook tokens,
                padding).

        Returns:
            Tensor: Scalar float32 loss.
        """
        b, length, width = hidden.shape
        if not (len(first_positions) == len(coverage) == input_ids.shape[0] == b):
            raise ValueError(f'{len(first_positions)} position groups, {len(coverage)} '
                             f'coverage groups, {input_ids.shape[0]} id rows and {b} hidden '
                             'rows do not match')
        key_rows, query_rows, kept, sizes = [], [], [], []
        for i, (ids, first, cov) in enumerate(zip(input_ids, first_positions, coverage)):
            image = torch.nonzero(ids < 0).flatten()
            if cov.shape != (first.shape[0], image.shape[0]):
                raise ValueError(f'sequence {i}: coverage of shape {tuple(cov.shape)} for '
                                 f'{first.shape[0]} targets and {image.shape[0]} image tokens')
            where, _, keep = preceding_window(ids, first, self.window, ignore_ids)
            kept.append(keep)
            key_rows.append(image + i * length)
            query_rows.append(where.flatten() + i * length)
            sizes.append((image.shape[0], first.shape[0]))
        flat = hidden.reshape(b * length, width).to(self.key.weight.dtype)
        keys_all = self.key(flat.index_select(0, torch.cat(key_rows)))
        queries_all = self.query(flat.index_select(0, torch.cat(query_rows)))
        # Ties the result to both projections and the states even when no pair is kept.
        total = (keys_all.sum() + queries_all.sum()).float() * 0.0
        count = total
        k0 = q0 = 0
        for (num_keys, num_targets), keep, cov in zip(sizes, kept, coverage):
            keys = keys_all[k0:k0 + num_keys]
            queries = queries_all[q0:q0 + num_targets * self.window]
            k0, q0 = k0 + num_keys, q0 + num_targets * self.window
            if num_targets == 0:
                continue
            cov = cov.to(hidden.device).float()
            share = cov.sum(1, keepdim=True)
            target = cov / share.clamp(min=torch.finfo(cov.dtype).tiny)
            scores = queries.view(num_targets, self.window, -1) @ keys.t()
            logp = (scores.float() / math.sqrt(keys.shape[-1])).log_softmax(-1)
            weight = keep.float() * (share > 0).float()
            total = total - ((logp * target[:, None]).sum(-1) * weight).sum()
            count = count + weight.sum()
        return self.loss_weight * total / count.clamp(min=1.0)

    def step_flops(self, batch: int, num_targets: int, image_tokens: int,
                   codebook_tokens: int) -> Dict[str, float]:
        """FLOPs of one training step (for ``tools/analysis/benchmark.py``), forward and backward:
        the key ``Linear`` on every sample's image tokens, the query ``Linear`` on ``window``
        states per target, and their scores against every image token of the target's sample.

        Args:
            batch (int): Sequences in the step.
            num_targets (int): Targets in the step.
            image_tokens (int): Image tokens per sequence.
            codebook_tokens (int): Codebook tokens per target (not used).

        Returns:
            dict[str, float]: ``grounding_head``.
        """
        c, e = self.query.in_features, self.query.out_features
        rows = num_targets * self.window
        linear = 2.0 * (batch * image_tokens + rows) * c * e
        scores = 2.0 * rows * e * image_tokens
        return dict(grounding_head=linear * (2 + int(self.query.weight.requires_grad)) +
                    scores * 3)

    def extra_repr(self) -> str:
        return (f'window={self.window}, loss_weight={self.loss_weight}, '
                f'loss_name={self.loss_name!r}')
