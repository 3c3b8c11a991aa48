"""Resize an image so that its longest side has a given length (``pad_train_clip_images``).

Padding and normalisation are left to the model's data preprocessor, so the pipeline hands over
``uint8`` images of varying size and the padding is done once per batch, on the device.
"""
from typing import Tuple

import numpy as np
from mmcv.transforms import BaseTransform
from PIL import Image

from pixellm.registry import TRANSFORMS

_PIL_INTERPOLATION = dict(nearest=Image.NEAREST, bilinear=Image.BILINEAR, bicubic=Image.BICUBIC)


def longest_side_shape(height: int, width: int, size: int) -> Tuple[int, int]:
    """Return ``(h, w)`` after scaling ``(height, width)`` so that the longest side is ``size``.

    Rounds half up, as SAM's ``ResizeLongestSide.get_preprocess_shape`` that the official code
    uses, so the shapes match the official ``resize`` values.

    Args:
        height (int): Original height.
        width (int): Original width.
        size (int): Target length of the longest side.

    Returns:
        tuple[int, int]: New ``(h, w)``.
    """
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


@TRANSFORMS.register_module()
class ResizeLongestSide(BaseTransform):
    """Resize ``img`` so that its longest side is ``size``, keeping the aspect ratio.

    No padding and no normalisation here: the data preprocessor normalises with CLIP's mean/std
    and pads bottom/right to ``size x size``. Masks stay at the original resolution (losses and
    metrics compare predictions resized back to ``ori_shape``).

    Required keys: ``img`` (``uint8`` ``(H, W, 3)``).
    Updated keys: ``img``, ``img_shape``. Added keys: ``scale_factor`` (``(w_scale, h_scale)``).

    Args:
        size (int): Length of the longest side after resizing. Defaults to 448.
        interpolation (str): ``'bilinear'``, ``'bicubic'`` or ``'nearest'``.
            Defaults to ``'bilinear'``.
    """

    def __init__(self, size: int = 448, interpolation: str = 'bilinear') -> None:
        if size < 1:
            raise ValueError(f'size must be positive, got {size}')
        if interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f'interpolation must be one of {sorted(_PIL_INTERPOLATION)}, got '
                             f'{interpolation!r}')
        self.size = size
        self.interpolation = interpolation

    def transform(self, results: dict) -> dict:
        """Resize the image.

        Args:
            results (dict): Pipeline dict with ``img``.

        Returns:
            dict: ``results`` with the resized ``img``, ``img_shape`` and ``scale_factor``.
        """
        img = results['img']
        h, w = img.shape[:2]
        new_h, new_w = longest_side_shape(h, w, self.size)
        if (new_h, new_w) != (h, w):
            img = np.asarray(Image.fromarray(img).resize(
                (new_w, new_h), resample=_PIL_INTERPOLATION[self.interpolation]))
        results['img'] = img
        results['img_shape'] = (new_h, new_w)
        results['scale_factor'] = (new_w / w, new_h / h)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(size={self.size}, interpolation={self.interpolation!r})'
