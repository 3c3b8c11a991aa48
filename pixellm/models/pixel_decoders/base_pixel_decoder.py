"""The interface every pixel decoder implements, and what all of them share."""
from abc import ABCMeta, abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule


class BasePixelDecoder(BaseModule, metaclass=ABCMeta):
    """A pixel decoder: codebook hidden states of each target + image features -> mask logits.

    ``PixelLM`` builds the decoder with the keyword arguments below filled in from the model
    (unless the config sets them) and calls, per batch, ``decoder(target_states, image_feats)``
    and, per image, :meth:`postprocess`. A subclass creates its layers and implements
    :meth:`forward`; it inherits the codebook check and the resizing to the original image.

    Args:
        in_channels (int): Width of the codebook hidden states (the LLM width).
        feat_channels (int): Width of the image features the decoder reads.
        grid_size (int): Side of the image-feature grid (448 / 14 = 32 for CLIP ViT-L/14).
        input_size (int): Side of the encoder input, which the masks are upsampled to before
            the padding is cut off.
        num_scales (int): Image-feature scales (and codebook scales). Defaults to 2.
        tokens_per_scale (int): Codebook tokens per scale. Defaults to 3.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self, in_channels: int, feat_channels: int, grid_size: int, input_size: int,
                 num_scales: int = 2, tokens_per_scale: int = 3,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.feat_channels = feat_channels
        self.grid_size = grid_size
        self.input_size = input_size
        self.num_scales = num_scales
        self.tokens_per_scale = tokens_per_scale

    @abstractmethod
    def forward(self, target_states: Sequence[torch.Tensor],
                image_feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Low-resolution mask logits of every target of every image.

        Args:
            target_states (Sequence[Tensor]): Per image, ``(N_i, num_scales, tokens_per_scale,
                in_channels)``: the LLM hidden states at each of its ``N_i`` targets' codebook
                tokens (``N_i`` may be 0).
            image_feats (Sequence[Tensor]): Per scale, ``(B, grid_size**2, feat_channels)``.

        Returns:
            list[Tensor]: Per image, ``(N_i, h, w)`` logits covering the padded encoder input
            (square, any side; :meth:`postprocess` resizes them).
        """

    def check_codebook(self, num_scales: int, tokens_per_scale: int) -> None:
        """Raise if a codebook's shape does not match this decoder."""
        if (num_scales, tokens_per_scale) != (self.num_scales, self.tokens_per_scale):
            raise ValueError(
                f'codebook has {num_scales} scale(s) x {tokens_per_scale} token(s) but the pixel '
                f'decoder expects {self.num_scales} x {self.tokens_per_scale}; set the '
                'decoder\'s num_scales/tokens_per_scale to the codebook\'s (configs derive both '
                'from one setting)')

    def postprocess(self, low_res: torch.Tensor, valid_hw: Tuple[int, int],
                    ori_shape: Tuple[int, int]) -> torch.Tensor:
        """Upsample ``(N, h, w)`` logits to the input size, drop the padding, resize to original.

        Args:
            low_res (Tensor): Low-res mask logits of one image.
            valid_hw (tuple): (h, w) of the resized image inside the padded input.
            ori_shape (tuple): (H, W) of the original image.

        Returns:
            Tensor: ``(N, H, W)`` mask logits.
        """
        if low_res.shape[0] == 0:
            # Keep the (zero-weight) graph of an empty output: DDP and sharded backward passes
            # expect every rank to reach the decoder's weights.
            return low_res.new_zeros(0, *ori_shape) + low_res.sum() * 0.0
        s = self.input_size
        x = F.interpolate(low_res[:, None].float(), (s, s), mode='bilinear', align_corners=False)
        x = x[..., :int(valid_hw[0]), :int(valid_hw[1])]
        x = F.interpolate(x, tuple(int(v) for v in ori_shape), mode='bilinear',
                          align_corners=False)
        return x[:, 0]
