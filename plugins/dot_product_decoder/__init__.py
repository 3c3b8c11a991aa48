"""A third-party pixel decoder: per-pixel dot product with the fused target embedding."""
import torch
import torch.nn.functional as F
from torch import nn

from pixellm.models.pixel_decoders import PixelDecoder
from pixellm.registry import MODELS


@MODELS.register_module()
class DotProductPixelDecoder(PixelDecoder):
    """Masks as ``<target embedding, pixel embedding>`` over the finest scale (no transformer)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        e = self.embed_dim
        self.pixel_head = nn.Sequential(nn.Conv2d(e, e, 3, padding=1), nn.GELU(),
                                        nn.Conv2d(e, e, 1))

    def forward(self, target_states, image_feats):
        g = self.grid_size
        maps = [f.transpose(1, 2).reshape(f.shape[0], -1, g, g) for f in image_feats]
        pixels = sum(self.pixel_head(self.image_feature_neck(m)) for m in maps)
        pixels = F.interpolate(pixels, (self.low_res_size,) * 2, mode='bilinear')
        return [torch.einsum('nc,chw->nhw', self.embed_targets(s).mean(1), pixels[b])
                for b, s in enumerate(target_states)]
