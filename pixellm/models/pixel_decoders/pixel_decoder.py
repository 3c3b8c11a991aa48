"""PixelLM's lightweight pixel decoder: codebook hidden states + image features -> one mask per target."""
import copy
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pixellm.registry import MODELS
from .base_pixel_decoder import BasePixelDecoder
from .layers import MLP, LayerNorm2d, PositionEmbeddingRandom, TwoWayTransformer


@MODELS.register_module()
class PixelDecoder(BasePixelDecoder):
    """The official "lightweight pixel decoder" with ``vision_tower_for_mask`` (no SAM encoder).

    Per target: the codebook hidden states go through ``text_hidden_fcs`` (Linear, ReLU, Linear to
    ``embed_dim``), the ``tokens_per_scale`` states of each scale are fused by a weighted sum, and
    the fused vector of scale ``l`` prompts a two-way transformer over the scale-``l`` image
    features. Scales run coarse-to-fine: the pass at scale ``l > 0`` works on 2x upsampled
    features gated by ``sigmoid(previous mask) + 1``; the low-res masks of all scales are summed
    with per-scale weights, upsampled to the encoder input size, unpadded and resized to the
    original image.

    Difference from the official code, on purpose: the token-fusion and scale-fusion weights are
    registered ``nn.Parameter`` s here. The official code keeps them in plain Python lists, so
    they stay at their initial values (``1/(num_scales * tokens_per_scale)`` per token, as the
    official list is sized by all codebook tokens though each scale reads only
    ``tokens_per_scale`` of them, and ``1/num_scales`` per scale), are never
    trained and are not in its checkpoints. Set ``learn_fusion_weights=False`` to reproduce that.
    Likewise the official training leaves the image neck and the dense "no mask" embedding at
    their random initial values (``train_ds.py`` re-enables only ``mask_decoder``,
    ``text_hidden_fcs``, ``mm_projector`` and the token tables after peft freezes the rest); here
    they are trained, and ``train_neck=False`` freezes them as officially.

    Args:
        in_channels (int): Width of the codebook hidden states (the LLM width).
        feat_channels (int): Width of the projected image features (official: LLM width).
        grid_size (int): Side of the image-feature grid (448 / 14 = 32).
        input_size (int): Encoder input side the masks are upsampled to before unpadding.
        num_scales (int): Image-feature scales. Defaults to 2.
        tokens_per_scale (int): Codebook tokens per scale. Defaults to 3.
        embed_dim (int): Decoder width (official ``out_dim``). Defaults to 256.
        depth (int): Two-way transformer blocks. Defaults to 2.
        num_heads (int): Attention heads. Defaults to 8.
        mlp_dim (int): Transformer MLP width. Defaults to 2048.
        num_mask_tokens (int): SAM mask tokens (official 4, of which the first is used).
        learn_fusion_weights (bool): Train the fusion weights (see above). Defaults to True.
        train_neck (bool): Train the image neck and the dense embedding (see above).
            Defaults to True.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 in_channels: int,
                 feat_channels: int,
                 grid_size: int,
                 input_size: int,
                 num_scales: int = 2,
                 tokens_per_scale: int = 3,
                 embed_dim: int = 256,
                 depth: int = 2,
                 num_heads: int = 8,
                 mlp_dim: int = 2048,
                 num_mask_tokens: int = 4,
                 learn_fusion_weights: bool = True,
                 train_neck: bool = True,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(in_channels, feat_channels, grid_size, input_size, num_scales,
                         tokens_per_scale, init_cfg=init_cfg)
        if embed_dim % 8:
            raise ValueError(f'embed_dim must be a multiple of 8, got {embed_dim}')
        self.embed_dim = embed_dim
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(in_channels, in_channels), nn.ReLU(inplace=True),
            nn.Linear(in_channels, embed_dim), nn.Dropout(0.0))
        self.token_fusion = nn.Parameter(torch.full((tokens_per_scale,),
                                                    1.0 / (num_scales * tokens_per_scale)),
                                         requires_grad=learn_fusion_weights)
        self.scale_fusion = nn.Parameter(torch.full((num_scales,), 1.0 / num_scales),
                                         requires_grad=learn_fusion_weights)
        # Prompt side: a dense "no mask" embedding and the PE of the feature grid.
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.pe_upsampled = PositionEmbeddingRandom(embed_dim // 2)
        self.image_feature_neck = nn.Sequential(
            nn.Conv2d(feat_channels, embed_dim, kernel_size=1, bias=False), LayerNorm2d(embed_dim),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(embed_dim))
        transformer = TwoWayTransformer(depth, embed_dim, num_heads, mlp_dim)
        self.transformers = nn.ModuleList(
            copy.deepcopy(transformer) for _ in range(num_scales))
        self.num_mask_tokens = num_mask_tokens
        self.iou_token = nn.Embedding(1, embed_dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, embed_dim)
        self.level_embed = nn.Embedding(num_scales, embed_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim // 8, kernel_size=2, stride=2),
            LayerNorm2d(embed_dim // 8), nn.GELU())
        self.upsample_2x = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
            LayerNorm2d(embed_dim), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(embed_dim, embed_dim, embed_dim // 8, 3) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLP(embed_dim, 256, num_mask_tokens, 3)
        # PixelLM decodes with SAM's first mask token only (multimask off); the other mask
        # heads and the IoU head never reach a loss. They are kept so the module mirrors the
        # official one (a weight converter maps them one to one) and frozen so DDP sees no unused
        # trainable weight.
        for module in (*self.output_hypernetworks_mlps[1:], self.iou_prediction_head):
            module.requires_grad_(False)
        if not train_neck:
            self.image_feature_neck.requires_grad_(False)
            self.no_mask_embed.requires_grad_(False)

    @property
    def low_res_size(self) -> int:
        """Side of the fused low-res masks (official: 128 for a 32 grid and two scales)."""
        return self.grid_size * (4 if self.num_scales > 1 else 2)

    def embed_targets(self, states: torch.Tensor) -> torch.Tensor:
        """``(N, scales, tokens, in_channels)`` hidden states -> ``(N, scales, embed_dim)``."""
        if states.shape[1:3] != (self.num_scales, self.tokens_per_scale):
            self.check_codebook(states.shape[1], states.shape[2])
        x = self.text_prompts(states)
        return torch.einsum('nstc,t->nsc', x, self.token_fusion.to(x.dtype))

    def text_prompts(self, states: torch.Tensor) -> torch.Tensor:
        """``text_hidden_fcs`` on every codebook state: ``(N, scales, tokens, embed_dim)``.

        A subclass that conditions the prompts differently overrides this step.
        """
        return self.text_hidden_fcs(states.to(self.text_hidden_fcs[0].weight.dtype))

    def _decode_level(self, feats: torch.Tensor, prompts: torch.Tensor, level: int,
                      previous: Optional[torch.Tensor]) -> torch.Tensor:
        n = prompts.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens[None].expand(n, -1, -1), prompts[:, None]], dim=1)
        tokens = tokens + self.level_embed.weight[level]
        src = feats if feats.shape[0] == n else feats.expand(n, -1, -1, -1)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        if level == 0:
            pe = self.pe_layer((src.shape[-2], src.shape[-1]))
        else:
            src = self.upsample_2x(src)
            prev = previous
            if prev.shape[-2:] != src.shape[-2:]:
                prev = F.interpolate(prev[:, None], src.shape[-2:], mode='bilinear',
                                     align_corners=False)[:, 0]
            src = src * (prev.sigmoid()[:, None] + 1)
            pe = self.pe_upsampled((src.shape[-2], src.shape[-1]))
        src = src + dense
        pe = pe[None].expand(n, -1, -1, -1).to(src.dtype)
        b, c, h, w = src.shape
        hs, src = self.transformers[level](src, pe, tokens)
        mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        # Only the first mask token is used (SAM's single-mask output, as PixelLM).
        hyper = self.output_hypernetworks_mlps[0](mask_tokens_out[:, 0])
        return torch.einsum('nc,nchw->nhw', hyper, up)

    def forward(self, target_states: Sequence[torch.Tensor],
                image_feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Decode low-res mask logits.

        Args:
            target_states (list[Tensor]): Per image, ``(N_i, num_scales, tokens_per_scale, C)``
                codebook hidden states (N_i may be 0).
            image_feats (list[Tensor]): Per scale, ``(B, grid*grid, feat_channels)`` projected
                image features, scale 0 first.

        Returns:
            list[Tensor]: Per image, ``(N_i, low_res_size, low_res_size)`` mask logits.
        """
        if len(image_feats) != self.num_scales:
            raise ValueError(f'pixel decoder expects {self.num_scales} feature scale(s), got '
                             f'{len(image_feats)}; match the vision encoder\'s select_layers')
        g = self.grid_size
        maps = []
        for f in image_feats:
            if f.shape[1] != g * g:
                raise ValueError(f'image features have {f.shape[1]} tokens, expected {g}x{g}')
            maps.append(f.transpose(1, 2).reshape(f.shape[0], f.shape[2], g, g))
        feats = torch.stack(maps, dim=1)  # (B, scales, C, g, g)
        counts = [int(t.shape[0]) for t in target_states]
        out_size = self.low_res_size
        total = sum(counts)
        if total == 0:
            # Tie the empty outputs to every trainable weight and to the features, so a batch
            # without targets still gives DDP a gradient (zero) for all of them.
            anchor = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0 \
                + feats.sum() * 0.0
            return [feats.new_zeros(0, out_size, out_size) + anchor for _ in counts]
        # All targets of the batch are decoded together; each sees its own image's features.
        prompts = self.embed_targets(torch.cat([t for t in target_states if t.shape[0]]))
        b, s = feats.shape[:2]
        necked = self.image_feature_neck(feats.flatten(0, 1).to(prompts.dtype))
        necked = necked.view(b, s, *necked.shape[1:])
        owner = torch.repeat_interleave(torch.arange(len(counts), device=prompts.device),
                                        torch.tensor(counts, device=prompts.device),
                                        output_size=total)
        fused, previous = None, None
        for level in range(self.num_scales):
            # index_select, not necked[owner, level]: on a CPU, the backward of advanced indexing
            # sums the gradients of an image's targets with atomic adds from several threads, in
            # an order that varies from run to run; index_select's backward adds them in order.
            image_feats = necked[:, level].index_select(0, owner)
            masks = self._decode_level(image_feats, prompts[:, level], level, previous)
            previous = masks
            up = F.interpolate(masks[:, None].float(), (out_size, out_size), mode='bilinear',
                               align_corners=False)[:, 0].to(masks.dtype)
            term = self.scale_fusion[level].to(up.dtype) * up
            fused = term if fused is None else fused + term
        return list(fused.split(counts))
