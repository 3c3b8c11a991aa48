"""The interface every image encoder implements, and what all of them share."""
from abc import ABCMeta, abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule

from .utils import valid_patch_grid


class BaseVisionEncoder(BaseModule, metaclass=ABCMeta):
    """An image encoder: a padded square image batch -> patch features at one or more scales.

    The segmentors read it through this interface: ``PixelLM`` pads inputs to ``image_size``,
    derives the projectors' and the pixel decoder's widths and grid from ``embed_dim``,
    ``grid_size`` and ``num_scales``, and masks padded image tokens with :meth:`valid_patches`;
    LISA uses one for the LLM and one (SAM) for the masks. A subclass builds its network, sets
    ``frozen``, gives ``image_size``, ``patch_size``, ``embed_dim`` and ``num_scales``, and
    implements :meth:`forward`. It may also give ``fsdp_block_classes(cfg)`` (the block classes
    FSDP wraps, ``--fsdp``) as a classmethod.

    Args:
        frozen (bool): Freeze every weight and stay in eval mode (no dropout, drop-path or patch
            dropout). The subclass freezes its weights; :meth:`train` keeps the mode.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self, frozen: bool = False, init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.frozen = frozen

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the (square, padded) input."""

    @property
    @abstractmethod
    def patch_size(self) -> int:
        """Side of a patch in input pixels."""

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Channels of the features."""

    @property
    @abstractmethod
    def num_scales(self) -> int:
        """Feature tensors :meth:`forward` returns."""

    @property
    def grid_size(self) -> int:
        """Side of the patch grid."""
        return self.image_size // self.patch_size

    @abstractmethod
    def forward(self, images: torch.Tensor,
                valid_hw: Optional[Sequence[Tuple[int, int]]] = None) -> List[torch.Tensor]:
        """Encode images.

        Args:
            images (Tensor): ``(B, 3, S, S)`` normalised images, bottom/right padded,
                ``S == image_size``.
            valid_hw (Sequence[tuple], optional): The ``(h, w)`` of each image before padding.

        Returns:
            list[Tensor]: ``num_scales`` tensors ``(B, grid_size**2, embed_dim)``, row-major
            over the grid.
        """

    def train(self, mode: bool = True) -> 'BaseVisionEncoder':
        # A frozen encoder stays in eval mode.
        return super().train(mode and not self.frozen)

    def valid_patches(self, valid_hw: Sequence[Tuple[int, int]],
                      device: torch.device) -> torch.Tensor:
        """``(B, grid, grid)`` bool: patches that hold some of the unpadded image
        (:func:`~pixellm.models.vision_encoders.valid_patch_grid`)."""
        return valid_patch_grid(valid_hw, self.grid_size, self.patch_size, device)
