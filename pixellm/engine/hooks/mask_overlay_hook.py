"""Test predictions as PNGs: each predicted mask tinted on the image, question and answer below."""
import os
import os.path as osp
from collections import defaultdict
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from PIL import Image

from pixellm.registry import HOOKS
from pixellm.visualization import mask_colors, render_mask_overlay, render_prediction

__all__ = ['MaskOverlayHook', 'mask_colors', 'render_mask_overlay']


def require_metainfo(sample: Any, keys: Sequence[str], hook: str) -> dict:
    """The sample's metainfo, after checking it has every key in ``keys``.

    Raises:
        KeyError: A key is missing; the message names the hook, the image and the keys present.
    """
    meta = sample.metainfo
    for key in keys:
        if key not in meta:
            raise KeyError(f'{hook}: data sample (img_path={meta.get("img_path")!r}) has no '
                           f'metainfo {key!r}; present: {sorted(meta)}')
    return meta


def codebook_tokens_of(runner) -> tuple:
    """The codebook token strings of the runner's model (unwrapped), or ``()`` if it has none."""
    model = getattr(runner, 'model', None)
    model = getattr(model, 'module', model)
    codebook = getattr(model, 'codebook', None)
    return tuple(getattr(codebook, 'tokens', ()))


@HOOKS.register_module()
class MaskOverlayHook(Hook):
    """Save a PNG per test sample: predicted target masks over the image, question and answer.

    The answer is drawn as :func:`pixellm.apis.inference` and ``tools/chat.py`` draw it: each
    target's codebook tokens become ``[k]`` and the legend names the words before them.

    Each output of ``test_step`` (a ``PixelLMDataSample``) must carry the metainfo ``img_path``,
    ``question`` and ``pred_text`` and ``pred_instances.masks`` of shape ``(N, H, W)`` at the
    resolution of the image file. Files are named ``<image stem>_q<k>.png``: ``k`` is the
    metainfo ``question_idx`` when present, else the count of questions already seen for that
    image (with ``_rank<r>`` appended in distributed runs, where ranks count separately).

    Args:
        out_dir (str, optional): Output directory; ``None`` writes to
            ``<runner.log_dir>/mask_overlays``. Defaults to None.
        interval (int): Visualise every ``interval``-th test batch. Defaults to 1.
        max_samples (int, optional): Stop after writing this many images. Defaults to None.
        alpha (float): Weight of the mask colour in the blend. Defaults to 0.5.
    """

    priority = 'LOW'

    def __init__(self, out_dir: Optional[str] = None, interval: int = 1,
                 max_samples: Optional[int] = None, alpha: float = 0.5) -> None:
        if interval < 1:
            raise ValueError(f'MaskOverlayHook: interval must be >= 1, got {interval}')
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'MaskOverlayHook: alpha must be in [0, 1], got {alpha}')
        self.out_dir = out_dir
        self.interval = interval
        self.max_samples = max_samples
        self.alpha = alpha
        self.num_written = 0
        self._question_counts: Dict[str, int] = defaultdict(int)
        self.codebook_tokens: tuple = ()

    def before_test(self, runner) -> None:
        """Resolve the output directory and reset the counters.

        Args:
            runner (Runner): The runner.
        """
        if self.out_dir is None:
            self.out_dir = osp.join(runner.log_dir, 'mask_overlays')
        os.makedirs(self.out_dir, exist_ok=True)
        self.num_written = 0
        self._question_counts = defaultdict(int)
        self.codebook_tokens = codebook_tokens_of(runner)

    def after_test_iter(self, runner, batch_idx: int, data_batch: Any = None,
                        outputs: Optional[Sequence] = None) -> None:
        """Write the overlays of one test batch.

        Args:
            runner (Runner): The runner.
            batch_idx (int): Index of the batch in the test loop.
            data_batch (Any): The batch (unused: everything needed is in ``outputs``).
            outputs (Sequence[PixelLMDataSample]): The predictions.
        """
        if outputs is None or not self.every_n_inner_iters(batch_idx, self.interval):
            return
        if self.out_dir is None:
            self.before_test(runner)
        for sample in outputs:
            if self.max_samples is not None and self.num_written >= self.max_samples:
                return
            self.write_sample(sample)

    def write_sample(self, sample: Any) -> str:
        """Render one data sample and save it.

        Args:
            sample (PixelLMDataSample): A prediction with the metainfo and masks described in the
                class docstring.

        Returns:
            str: The path of the written PNG.

        Raises:
            KeyError: A required metainfo field is missing.
            ValueError: The masks do not match the image size.
        """
        meta = require_metainfo(sample, ('img_path', 'question', 'pred_text'), 'MaskOverlayHook')
        img_path = meta['img_path']
        image = Image.open(img_path)
        masks = self._masks(sample)
        if masks.size == 0:
            # No target predicted: the image and the text are still worth seeing.
            masks = np.zeros((0, image.height, image.width), dtype=bool)
        if masks.shape[1:] != (image.height, image.width):
            raise ValueError(
                f'MaskOverlayHook: pred_instances.masks of {img_path!r} have shape '
                f'{tuple(masks.shape)}, but the image is {image.height}x{image.width}; masks '
                'must be at the original image resolution.')
        stem = osp.splitext(osp.basename(img_path))[0]
        if 'question_idx' in meta:
            name = f'{stem}_q{int(meta["question_idx"])}'
        else:
            name = f'{stem}_q{self._question_counts[stem]}'
            self._question_counts[stem] += 1
            # Ranks count independently; questions of one image may be split across them.
            if get_world_size() > 1:
                name += f'_rank{get_rank()}'
        out_path = osp.join(self.out_dir, f'{name}.png')
        render_prediction(image, masks, str(meta['question']), str(meta['pred_text']),
                          self.codebook_tokens, alpha=self.alpha).save(out_path)
        self.num_written += 1
        return out_path

    @staticmethod
    def _masks(sample: Any) -> np.ndarray:
        pred = sample.get('pred_instances')
        masks = None if pred is None else pred.get('masks')
        if masks is None:
            raise KeyError(f'MaskOverlayHook: data sample {sample.metainfo.get("img_path")!r} has '
                           'no pred_instances.masks')
        if isinstance(masks, torch.Tensor):
            masks = masks.detach().cpu().numpy()
        masks = np.asarray(masks)
        if masks.ndim == 2:
            masks = masks[None]
        return masks.astype(bool)
