"""Test predictions as PNGs: each predicted mask tinted on the image, question and answer below."""
import colorsys
import os
import os.path as osp
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from PIL import Image, ImageDraw, ImageFont

from pixellm.registry import HOOKS

Color = Tuple[int, int, int]


def mask_colors(num: int) -> List[Color]:
    """``num`` distinct, saturated RGB colours (golden-ratio hue steps, reproducible).

    Args:
        num (int): Number of colours.

    Returns:
        list[tuple[int, int, int]]: RGB colours in 0-255.
    """
    colors = []
    for i in range(num):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> List[str]:
    """Split ``text`` into lines no wider than ``width`` pixels (long words are cut)."""
    lines: List[str] = []
    for paragraph in text.splitlines() or ['']:
        words = paragraph.split(' ')
        line = ''
        for word in words:
            candidate = word if not line else f'{line} {word}'
            if draw.textlength(candidate, font=font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            # A single word wider than the image is cut into pieces that fit.
            while draw.textlength(word, font=font) > width and len(word) > 1:
                cut = max(1, len(word) * width // max(1, int(draw.textlength(word, font=font))))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def render_mask_overlay(image: Image.Image, masks: np.ndarray, question: str, answer: str,
                        alpha: float = 0.5) -> Image.Image:
    """The image with mask ``i`` blended in colour ``mask_colors(N)[i]``, text in a band below.

    Args:
        image (PIL.Image.Image): The original image.
        masks (np.ndarray): ``(N, H, W)`` bool masks at the image's resolution.
        question (str): The question, written as ``Q: ...``.
        answer (str): The predicted answer, written as ``A: ...``.
        alpha (float): Weight of the mask colour. Defaults to 0.5.

    Returns:
        PIL.Image.Image: RGB image of width W and height H plus the text band.
    """
    rgb = np.asarray(image.convert('RGB')).astype(np.float32)
    colors = mask_colors(len(masks))
    for mask, color in zip(masks, colors):
        rgb[mask] = rgb[mask] * (1 - alpha) + np.asarray(color, np.float32) * alpha
    overlay = Image.fromarray(np.round(rgb).clip(0, 255).astype(np.uint8))

    font = ImageFont.load_default()
    width = overlay.width
    measure = ImageDraw.Draw(overlay)
    margin = 4
    lines = _wrap(measure, f'Q: {question}', font, width - 2 * margin)
    lines += _wrap(measure, f'A: {answer}', font, width - 2 * margin)
    left, top, right, bottom = measure.textbbox((0, 0), 'Ag', font=font)
    line_height = bottom - top + 2
    legend_height = line_height if len(masks) else 0
    band = margin * 2 + line_height * len(lines) + legend_height

    canvas = Image.new('RGB', (width, overlay.height + band), (255, 255, 255))
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = overlay.height + margin
    for line in lines:
        draw.text((margin, y), line, fill=(0, 0, 0), font=font)
        y += line_height
    # A colour swatch per target, in answer order, so the text's targets can be matched to masks.
    x = margin
    for index, color in enumerate(colors):
        label = str(index + 1)
        swatch = line_height - 2
        draw.rectangle([x, y, x + swatch, y + swatch], fill=color)
        x += swatch + 2
        draw.text((x, y), label, fill=(0, 0, 0), font=font)
        x += int(draw.textlength(label, font=font)) + margin
    return canvas


@HOOKS.register_module()
class MaskOverlayHook(Hook):
    """Save a PNG per test sample: predicted target masks over the image, question and answer.

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
        meta = sample.metainfo
        for key in ('img_path', 'question', 'pred_text'):
            if key not in meta:
                raise KeyError(f'MaskOverlayHook: data sample (img_path={meta.get("img_path")!r}) '
                               f'has no metainfo {key!r}; present: {sorted(meta)}')
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
        render_mask_overlay(image, masks, str(meta['question']), str(meta['pred_text']),
                            alpha=self.alpha).save(out_path)
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
