"""Validation overlays during training, through mmengine's visualizer (local files, TensorBoard)."""
import os.path as osp
from typing import Any, Optional, Sequence

import numpy as np
from mmengine.hooks import Hook
from PIL import Image

from pixellm.registry import HOOKS
from pixellm.visualization import render_mask_overlay, render_prediction

from .mask_overlay_hook import MaskOverlayHook, codebook_tokens_of, require_metainfo


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 6) -> Image.Image:
    """Two images next to each other on white, top-aligned."""
    canvas = Image.new('RGB', (left.width + gap + right.width, max(left.height, right.height)),
                       (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


@HOOKS.register_module()
class PixelLMVisualizationHook(Hook):
    """Every ``interval`` validation iterations, draw prediction | ground truth of one sample.

    At each validation run the hook takes the first sample of batches ``0, interval,
    2 * interval, ...`` (at most ``max_samples``), so with the usual unshuffled validation sampler
    the same samples are drawn at every validation and their progress can be followed. Each image
    shows on the left the predicted masks with the question and the generated answer (targets
    numbered, legend named as in ``tools/chat.py``) and on the right the ground-truth masks with
    the reference answer. Images go through ``runner.visualizer.add_image`` under the name
    ``val_<image stem>_q<k>`` at step ``runner.iter``: ``LocalVisBackend`` writes
    ``<log_dir>/vis_data/vis_image/<name>_<step>.png``, ``TensorboardVisBackend`` the event file.

    Args:
        interval (int): Visualise every ``interval``-th validation batch. Defaults to 50.
        max_samples (int): Images per validation run. Defaults to 4.
        alpha (float): Weight of the mask colour. Defaults to 0.5.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 50, max_samples: int = 4, alpha: float = 0.5) -> None:
        if interval < 1:
            raise ValueError(f'PixelLMVisualizationHook: interval must be >= 1, got {interval}')
        if max_samples < 1:
            raise ValueError(f'PixelLMVisualizationHook: max_samples must be >= 1, got '
                             f'{max_samples}')
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'PixelLMVisualizationHook: alpha must be in [0, 1], got {alpha}')
        self.interval = interval
        self.max_samples = max_samples
        self.alpha = alpha
        self.num_drawn = 0
        self.codebook_tokens: tuple = ()

    def before_val(self, runner) -> None:
        """Reset the per-validation count and read the codebook tokens."""
        self.num_drawn = 0
        self.codebook_tokens = codebook_tokens_of(runner)

    def after_val_iter(self, runner, batch_idx: int, data_batch: Any = None,
                       outputs: Optional[Sequence] = None) -> None:
        """Draw the first sample of every ``interval``-th batch.

        Args:
            runner (Runner): The runner.
            batch_idx (int): Index of the batch in the validation loop.
            data_batch (Any): The batch (unused).
            outputs (Sequence[PixelLMDataSample]): The predictions.
        """
        if not outputs or batch_idx % self.interval or self.num_drawn >= self.max_samples:
            return
        sample = outputs[0]
        image = self.draw(sample)
        meta = sample.metainfo
        stem = osp.splitext(osp.basename(str(meta.get('img_path', 'sample'))))[0]
        name = f'val_{stem}_q{int(meta.get("question_index", meta.get("question_idx", 0)))}'
        runner.visualizer.add_image(name, np.asarray(image), step=runner.iter)
        self.num_drawn += 1

    def draw(self, sample: Any) -> Image.Image:
        """Prediction (left) and ground truth (right) of one data sample.

        Args:
            sample (PixelLMDataSample): A prediction with ``img_path``, ``question``,
                ``pred_text`` and ``answer`` metainfo, ``pred_instances.masks`` and
                ``gt_instances.masks`` at the image's resolution.

        Returns:
            PIL.Image.Image: The two overlays side by side.
        """
        meta = require_metainfo(sample, ('img_path', 'question', 'pred_text'),
                                'PixelLMVisualizationHook')
        image = Image.open(meta['img_path'])
        pred = MaskOverlayHook._masks(sample)
        if pred.size == 0:
            pred = np.zeros((0, image.height, image.width), dtype=bool)
        left = render_prediction(image, pred, f'{meta["question"]} (prediction)',
                                 str(meta['pred_text']), self.codebook_tokens, alpha=self.alpha)
        gt = sample.get('gt_instances')
        gt_masks = np.zeros((0, image.height, image.width), dtype=bool)
        if gt is not None and gt.get('masks') is not None:
            gt_masks = np.asarray(gt.masks.cpu() if hasattr(gt.masks, 'cpu') else gt.masks,
                                  dtype=bool).reshape(-1, image.height, image.width)
        answer = str(meta.get('answer', '')).replace('{seg}', '[*]')
        right = render_mask_overlay(image, gt_masks, f'{meta["question"]} (ground truth)',
                                    answer, alpha=self.alpha)
        return side_by_side(left, right)
