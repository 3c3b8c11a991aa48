"""Building blocks of PixelLM's lightweight mask decoder (SAM-style two-way transformer)."""
import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of ``(B, C, H, W)`` maps."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding of a normalised 2-D grid (SAM's prompt encoder PE).

    Args:
        num_pos_feats (int): Frequencies; the encoding has ``2 * num_pos_feats`` channels.
        scale (float): Standard deviation of the Gaussian frequency matrix.
    """

    def __init__(self, num_pos_feats: int = 128, scale: float = 1.0) -> None:
        super().__init__()
        # A buffer, not a parameter: the frequencies are fixed at init, as in SAM.
        self.register_buffer('gaussian_matrix', scale * torch.randn(2, num_pos_feats))

    def forward(self, size: Tuple[int, int]) -> torch.Tensor:
        """Return the ``(2 * num_pos_feats, h, w)`` encoding of an ``h x w`` grid."""
        h, w = size
        matrix = self.gaussian_matrix
        ys = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        xs = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        coords = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), dim=-1)  # (h, w, 2) as (x, y)
        coords = (2 * coords - 1) @ matrix * (2 * math.pi)
        return torch.cat([coords.sin(), coords.cos()], dim=-1).permute(2, 0, 1)


class Attention(nn.Module):
    """Multi-head attention with an optional inner-width reduction (SAM's ``downsample_rate``)."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        inner = dim // downsample_rate
        if inner % num_heads:
            raise ValueError(f'{num_heads} heads do not divide the inner width {inner}')
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class TwoWayAttentionBlock(nn.Module):
    """Tokens self-attend, attend to the image, pass an MLP; the image then attends to tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer between prompt tokens and an image embedding.

    Args:
        depth (int): Blocks. PixelLM: 2.
        dim (int): Width. PixelLM: 256.
        num_heads (int): Heads. PixelLM: 8.
        mlp_dim (int): MLP width. PixelLM: 2048.
        downsample_rate (int): Inner-width reduction of the cross attentions. SAM: 2.
    """

    def __init__(self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate, i == 0)
            for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor,
                tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return updated ``(B, T, C)`` tokens and ``(B, h*w, C)`` image features."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
