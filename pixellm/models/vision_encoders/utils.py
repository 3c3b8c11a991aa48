"""What the vision encoders share: the grid of patches that hold image, the checkpoint-config check."""
from typing import Any, Dict, Optional, Sequence, Tuple

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


def check_config_matches(config: Any, expected: Optional[Dict], pretrained: str) -> None:
    """Raise if a checkpoint's config differs from the config a model config gives next to it.

    A config given with a checkpoint describes the model the caller expects (the 7B recipe
    gives the full-size shapes so that it also builds without weights): it must agree, not be
    silently ignored.

    Args:
        config: The loaded checkpoint's transformers config.
        expected (dict, optional): The fields the caller expects; None checks nothing.
        pretrained (str): The checkpoint, for the message.

    Raises:
        ValueError: Naming every field that differs, with both values.
    """
    differ = {k: (v, getattr(config, k, None)) for k, v in (expected or {}).items()
              if _normalise(getattr(config, k, None)) != _normalise(v)}
    if differ:
        raise ValueError(
            f'the checkpoint {pretrained!r} does not match vision_config: ' + ', '.join(
                f'{k}={want!r} in the config but {got!r} in the checkpoint'
                for k, (want, got) in differ.items()))


def _normalise(value: Any) -> Any:
    # A config read from JSON has lists where a Python config wrote tuples.
    return list(value) if isinstance(value, tuple) else value
