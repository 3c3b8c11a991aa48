"""An auxiliary loss, not in the PixelLM paper: the states before a target point at its image.

The tiny demo LLM (random weights) names the right object for referring questions, whose words
are in the question, but often not for questions that need the image ("Segment every diamond.":
the answer must read the colour of each diamond off the image tokens). Linear probes read the
colour and shape from those tokens; the LLM does not learn, within the demo's steps, to look them
up. This loss asks for that look-up directly: at each of the ``window`` positions before a
target's codebook tokens (where "the", "red", "diamond" are predicted), a query projection of
the LLM's last hidden state scores every image token (a key projection of its last hidden
state), and the softmax over the image tokens is pulled towards the target's mask coverage of
the image-token grid (cross-entropy). Only the ground-truth masks are used; inference does not
run the projections.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixellm.registry import MODELS


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
class GroundingLoss(nn.Module):
    """Cross-entropy between the states' image-token scores and the target's mask coverage.

    Args:
        in_channels (int): LLM width (PixelLM fills it in).
        embed_dim (int): Width of the query and key projections. Defaults to 64.
        window (int): Positions before the first codebook token of each target. Defaults to 3.
        loss_weight (float): Multiplier. Defaults to 1.0.
        loss_name (str): Key in the loss dict. Defaults to ``'loss_grounding'``.
    """

    def __init__(self, in_channels: int, embed_dim: int = 64, window: int = 3,
                 loss_weight: float = 1.0, loss_name: str = 'loss_grounding') -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f'window must be >= 1, got {window}')
        self.query = nn.Linear(in_channels, embed_dim)
        self.key = nn.Linear(in_channels, embed_dim)
        self.window = window
        self.loss_weight = loss_weight
        self.loss_name = loss_name

    def forward(self, hidden: Tensor, image_positions: Sequence[Tensor],
                target_starts: Sequence[Tensor], coverage: Sequence[Tensor]) -> Tensor:
        """Compute the loss.

        Args:
            hidden (Tensor): ``(B, L, C)`` last hidden states.
            image_positions (Sequence[Tensor]): Per sample, the ``(N,)`` positions of its image
                tokens in grid order.
            target_starts (Sequence[Tensor]): Per sample, the ``(n,)`` position of each target's
                first codebook token.
            coverage (Sequence[Tensor]): Per sample, ``(n, N)`` mask coverage of the grid.

        Returns:
            Tensor: Scalar loss (a graph-connected zero when no target covers any cell).
        """
        offsets = torch.arange(1, self.window + 1, device=hidden.device)
        terms = []
        for i, (img_pos, starts, cov) in enumerate(zip(image_positions, target_starts, coverage)):
            keep = cov.sum(1) > 0
            if not bool(keep.any()):
                continue
            starts, cov = starts[keep], cov[keep]
            target = cov / cov.sum(1, keepdim=True)
            keys = self.key(hidden[i].index_select(0, img_pos))
            where = (starts[:, None] - offsets[None]).clamp(min=0)
            queries = self.query(hidden[i].index_select(0, where.flatten()))
            scores = queries.view(len(starts), self.window, -1) @ keys.t()
            logp = (scores / math.sqrt(keys.shape[-1])).float().log_softmax(-1)
            terms.append(-(logp * target[:, None].float()).sum(-1).flatten())
        if not terms:
            return hidden.sum() * 0.0
        return self.loss_weight * torch.cat(terms).mean()
