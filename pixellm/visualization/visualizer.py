"""The visualizer of PixelLM predictions, as mmseg's ``SegLocalVisualizer`` is for seg maps."""
from typing import Any, Optional, Sequence

import numpy as np
import torch
from mmengine.visualization import Visualizer
from PIL import Image

from pixellm.registry import VISUALIZERS
from .overlay import render_mask_overlay, render_prediction


def require_metainfo(sample: Any, keys: Sequence[str], who: str) -> dict:
    """The sample's metainfo, after checking it has every key in ``keys``.

    Raises:
        KeyError: A key is missing; the message names ``who``, the image and the keys present.
    """
    meta = sample.metainfo
    for key in keys:
        if key not in meta:
            raise KeyError(f'{who}: data sample (img_path={meta.get("img_path")!r}) has no '
                           f'metainfo {key!r}; present: {sorted(meta)}')
    return meta


def instance_masks(sample: Any, field: str) -> Optional[np.ndarray]:
    """``sample.<field>.masks`` as an ``(N, H, W)`` bool array, or ``None`` when absent."""
    instances = sample.get(field)
    masks = None if instances is None else instances.get('masks')
    if masks is None:
        return None
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    return (masks[None] if masks.ndim == 2 else masks).astype(bool)


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 6) -> Image.Image:
    """Two images next to each other on white, top-aligned."""
    canvas = Image.new('RGB', (left.width + gap + right.width, max(left.height, right.height)),
                       (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


@VISUALIZERS.register_module()
class PixelLMVisualizer(Visualizer):
    """Draw a PixelLM data sample: the prediction and, beside it, the ground truth.

    The prediction panel tints each predicted target's mask on the image, with the question and
    the generated answer below, each target's codebook tokens written ``[k]`` and a legend naming
    the words before them (as ``tools/chat.py`` prints it). The ground-truth panel draws the
    sample's ``gt_instances.masks`` with the reference answer. Images go to the visualizer's
    backends (``add_image``: local files, TensorBoard) or, with ``out_file``, to a PNG.

    Args:
        name (str): Instance name. Defaults to ``'visualizer'``.
        image (np.ndarray, optional): See mmengine's ``Visualizer``. Defaults to None.
        vis_backends (list[dict], optional): Backends of ``add_image``. Defaults to None.
        save_dir (str, optional): Folder of the backends' files. Defaults to None.
        alpha (float): Weight of the mask colour in the blend. Defaults to 0.5.
        codebook_tokens (Sequence[str]): The model's codebook tokens, to number the targets in
            the answer; :class:`~pixellm.engine.PixelLMVisualizationHook` sets them from the
            runner's model. Defaults to ``()`` (the answer drawn as generated).
    """

    def __init__(self, name: str = 'visualizer', image: Optional[np.ndarray] = None,
                 vis_backends: Optional[list] = None, save_dir: Optional[str] = None,
                 alpha: float = 0.5, codebook_tokens: Sequence[str] = ()) -> None:
        super().__init__(name=name, image=image, vis_backends=vis_backends, save_dir=save_dir)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'PixelLMVisualizer: alpha must be in [0, 1], got {alpha}')
        self.alpha = alpha
        self.codebook_tokens = tuple(codebook_tokens)

    def draw_datasample(self, data_sample: Any, image: Optional[np.ndarray] = None,
                        draw_gt: bool = True, draw_pred: bool = True) -> Image.Image:
        """Draw the prediction and/or the ground truth of one data sample.

        Args:
            data_sample (PixelLMDataSample): Metainfo ``img_path`` and ``question``; for the
                prediction ``pred_text`` and ``pred_instances.masks``, for the ground truth
                ``gt_instances.masks`` (optional) and ``answer`` (optional). Masks are ``(N, H,
                W)`` at the image's resolution.
            image (np.ndarray, optional): The RGB image; ``None`` reads ``img_path``.
            draw_gt (bool): Draw the ground-truth panel. Defaults to True.
            draw_pred (bool): Draw the prediction panel. Defaults to True.

        Returns:
            PIL.Image.Image: The panels side by side (prediction left).

        Raises:
            KeyError: A metainfo field or the predicted masks are missing.
            ValueError: The masks do not have the image's size.
        """
        meta = require_metainfo(data_sample, ('img_path', 'question'), 'PixelLMVisualizer')
        picture = (Image.open(meta['img_path']) if image is None
                   else Image.fromarray(np.asarray(image)))
        size = (picture.height, picture.width)
        panels = []
        if draw_pred:
            require_metainfo(data_sample, ('pred_text', ), 'PixelLMVisualizer')
            masks = instance_masks(data_sample, 'pred_instances')
            if masks is None:
                raise KeyError(f'PixelLMVisualizer: data sample {meta["img_path"]!r} has no '
                               'pred_instances.masks')
            masks = self._at_size(masks, size, meta['img_path'], 'pred_instances.masks')
            question = f'{meta["question"]} (prediction)' if draw_gt else str(meta['question'])
            panels.append(render_prediction(picture, masks, question, str(meta['pred_text']),
                                            self.codebook_tokens, alpha=self.alpha))
        if draw_gt:
            masks = instance_masks(data_sample, 'gt_instances')
            masks = self._at_size(np.zeros((0, ) + size, dtype=bool) if masks is None else masks,
                                  size, meta['img_path'], 'gt_instances.masks')
            answer = str(meta.get('answer', '')).replace('{seg}', '[*]')
            panels.append(render_mask_overlay(picture, masks, f'{meta["question"]} (ground truth)',
                                              answer, alpha=self.alpha))
        if not panels:
            raise ValueError('PixelLMVisualizer: draw_gt and draw_pred are both False')
        return panels[0] if len(panels) == 1 else side_by_side(*panels)

    @staticmethod
    def _at_size(masks: np.ndarray, size: tuple, img_path: str, field: str) -> np.ndarray:
        if masks.size == 0:
            # No target: the image and the text are still worth seeing.
            return np.zeros((0, ) + size, dtype=bool)
        if masks.shape[1:] != size:
            raise ValueError(f'PixelLMVisualizer: {field} of {img_path!r} have shape '
                             f'{tuple(masks.shape)}, but the image is {size[0]}x{size[1]}; '
                             'masks must be at the original image resolution.')
        return masks

    def add_datasample(self, name: str, image: Optional[np.ndarray], data_sample: Any = None,
                       draw_gt: bool = True, draw_pred: bool = True, show: bool = False,
                       wait_time: float = 0, out_file: Optional[str] = None,
                       step: int = 0) -> None:
        """Draw a data sample and store it: in ``out_file``, else through the backends.

        Args:
            name (str): The image's name in the backends.
            image (np.ndarray, optional): The RGB image; ``None`` reads the sample's
                ``img_path``.
            data_sample (PixelLMDataSample): See :meth:`draw_datasample`.
            draw_gt (bool): Draw the ground truth. Defaults to True.
            draw_pred (bool): Draw the prediction. Defaults to True.
            show (bool): Also show it in a window. Defaults to False.
            wait_time (float): Seconds the window stays. Defaults to 0.
            out_file (str, optional): Write a PNG here instead of calling the backends.
            step (int): The global step, for the backends. Defaults to 0.
        """
        drawn = self.draw_datasample(data_sample, image, draw_gt=draw_gt, draw_pred=draw_pred)
        if show:
            self.show(np.asarray(drawn), win_name=name, wait_time=wait_time)
        if out_file is not None:
            drawn.save(out_file)
        else:
            self.add_image(name, np.asarray(drawn), step)
