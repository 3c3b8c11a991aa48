"""Batches PixelLM inputs: CLIP normalisation and bottom-right padding to the encoder size."""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor

from pixellm.registry import MODELS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@MODELS.register_module()
class PixelLMDataPreprocessor(BaseDataPreprocessor):
    """Normalise resized images and pad them to ``size x size`` (PixelLM ``pad_train_clip_images``).

    The pipeline resizes each image so its longest side is ``size``; here each image is scaled to
    [0, 1], normalised with ``mean``/``std`` and padded with zeros at the bottom and right *after*
    normalisation, as the official code does. The defaults are CLIP's statistics; note that with
    ``--pad_train_clip_images`` the official loaders normalise with SAM's ImageNet mean/std
    instead, which the 7B/13B model configs set (``configs/_base_/models/pixellm_7b.py``). The unpadded
    size is kept in each sample's ``img_shape`` so the model can mask padded patches and crop the
    masks.

    Args:
        size (int): Encoder input side. Defaults to 448.
        mean (Sequence[float]): Per-channel mean in [0, 1] units. Defaults to CLIP's.
        std (Sequence[float]): Per-channel std in [0, 1] units. Defaults to CLIP's.
        non_blocking (bool): Non-blocking device copies.
    """

    def __init__(self, size: int = 448, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, non_blocking: bool = False) -> None:
        super().__init__(non_blocking)
        self.size = size
        self.register_buffer('mean', torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(3, 1, 1), persistent=False)

    def forward(self, data: Dict, training: bool = False) -> Dict:
        """Return ``dict(inputs=(B, 3, size, size) float, data_samples=[...])``."""
        data = self.cast_data(data)
        inputs, samples = data['inputs'], data.get('data_samples')
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            inputs = list(inputs)
        batch = []
        for i, img in enumerate(inputs):
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f'sample {i}: expected a (3, h, w) image, got {tuple(img.shape)}')
            h, w = img.shape[-2:]
            if max(h, w) > self.size:
                path = samples[i].metainfo.get('img_path', '?') if samples else '?'
                raise ValueError(f'sample {i} ({path}): image of {h}x{w} is larger than the '
                                 f'encoder size {self.size}; resize it in the pipeline '
                                 f'(ResizeLongestSide(size={self.size}))')
            x = (img.float() / 255.0 - self.mean) / self.std
            batch.append(F.pad(x, (0, self.size - w, 0, self.size - h), value=0.0))
            if samples is not None:
                samples[i].set_metainfo(dict(img_shape=(int(h), int(w)),
                                             pad_shape=(self.size, self.size)))
        return dict(inputs=torch.stack(batch), data_samples=samples)
