"""Helpers shared by the vision encoders."""
from typing import Sequence, Tuple

import torch


def valid_patch_grid(valid_hw: Sequence[Tuple[int, int]], grid_size: int, patch_size: int,
                     device: torch.device) -> torch.Tensor:
    """The patches of a ``grid_size x grid_size`` grid that hold some of each unpadded image.

    Images are padded at the bottom and right (longest-side resize, then pad), so the valid
    patches of an ``h x w`` image are the top-left ``ceil(h / patch) x ceil(w / patch)`` block; a
    patch only partly in the padding counts as valid, and every image keeps at least one patch.

    Args:
        valid_hw (Sequence[tuple[int, int]]): ``(h, w)`` of each image before padding.
        grid_size (int): Side of the patch grid.
        patch_size (int): Side of a patch in pixels.
        device (torch.device): Device of the result.

    Returns:
        Tensor: ``(B, grid_size, grid_size)`` bool, True where a patch holds image pixels.
    """
    keep = torch.zeros(len(valid_hw), grid_size, grid_size, dtype=torch.bool, device=device)
    for i, (h, w) in enumerate(valid_hw):
        keep[i, :max(1, -(-int(h) // patch_size)), :max(1, -(-int(w) // patch_size))] = True
    return keep
