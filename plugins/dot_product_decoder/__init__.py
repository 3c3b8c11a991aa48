"""A third-party pixel decoder: per-pixel dot product with a target embedding."""
import torch
import torch.nn.functional as F
from torch import nn

from pixellm.analysis.flops import flop_formula, matmul_multiplier
from pixellm.models.pixel_decoders import BasePixelDecoder
from pixellm.registry import MODELS


@MODELS.register_module()
class DotProductPixelDecoder(BasePixelDecoder):
    """Masks as ``<target embedding, pixel embedding>`` summed over scales (no transformer)."""

    def __init__(self, embed_dim=64, **kwargs):
        super().__init__(**kwargs)
        c, e = self.in_channels, embed_dim
        self.target_proj = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, e))
        self.pixel_head = nn.Sequential(nn.Conv2d(self.feat_channels, e, 1), nn.GELU(),
                                        nn.Conv2d(e, e, 3, padding=1), nn.GELU(),
                                        nn.Conv2d(e, e, 1))

    def forward(self, target_states, image_feats):
        g = self.grid_size
        maps = [f.transpose(1, 2).reshape(f.shape[0], -1, g, g) for f in image_feats]
        pixels = F.interpolate(sum(self.pixel_head(m) for m in maps), (4 * g, 4 * g),
                               mode='bilinear')
        dtype = self.target_proj[0].weight.dtype
        return [torch.einsum('nc,chw->nhw', self.target_proj(s.to(dtype).mean((1, 2))),
                             pixels[b]) for b, s in enumerate(target_states)]


@flop_formula(DotProductPixelDecoder)
def dot_product_decoder_flops(dec, num_targets, batch, training=False, feats_grad=True):
    """FLOPs for tools/analysis/benchmark.py: the pixel head per image and scale, the target
    projection per target, the dot product per target (x3 when trained: input and weight grads)."""
    g, c, f = dec.grid_size, dec.in_channels, dec.feat_channels
    e = dec.target_proj[-1].out_features
    m = matmul_multiplier(training, True, True)
    first = matmul_multiplier(training, True, feats_grad)  # its input may need no gradient
    head = 2.0 * batch * dec.num_scales * g * g * (f * e * first + 10 * e * e * m)
    return dict(decoder_head=head, decoder_prompt=2.0 * num_targets * (c * c + c * e) * m,
                decoder_product=2.0 * num_targets * e * (4 * g) ** 2 * m)
