"""MLP projector from vision-encoder features to the LLM width (LLaVA / PixelLM ``mm_projector``)."""
from typing import Dict, Optional

import torch
from mmengine.model import BaseModule
from torch import nn

from pixellm.registry import MODELS


@MODELS.register_module()
class MLPProjector(BaseModule):
    """``Linear(in, hidden) -> GELU -> Linear(hidden, out)`` applied token-wise.

    PixelLM's ``separate_mm_projector`` builds two of these (``mm_projector`` for the LLM and
    ``out_mm_projector`` for the pixel decoder), with ``hidden = 2 * out`` (the official
    ``mm_projector_hidden_dim = 2``).

    Args:
        in_channels (int): Vision feature width (1024 for CLIP ViT-L).
        out_channels (int): LLM width.
        hidden_channels (int, optional): Hidden width; defaults to ``hidden_ratio * out_channels``.
        hidden_ratio (int): Used when ``hidden_channels`` is None. Defaults to 2 (official).
        num_layers (int): 1 gives a single Linear (LLaVA v1); 2 (default) the GELU MLP.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 hidden_channels: Optional[int] = None,
                 hidden_ratio: int = 2,
                 num_layers: int = 2,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.out_channels = out_channels
        if num_layers == 1:
            self.layers = nn.Sequential(nn.Linear(in_channels, out_channels))
        elif num_layers == 2:
            hidden = hidden_channels or hidden_ratio * out_channels
            self.layers = nn.Sequential(nn.Linear(in_channels, hidden), nn.GELU(),
                                        nn.Linear(hidden, out_channels))
        else:
            raise ValueError(f'num_layers must be 1 or 2, got {num_layers}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(..., in_channels)`` features to ``(..., out_channels)``."""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f'MLPProjector expects {self.in_channels} input channels, got '
                             f'{x.shape[-1]}')
        return self.layers(x.to(self.layers[0].weight.dtype))
