"""Load a dataset record's image and decode its target masks (COCO polygons and RLE)."""
import io
from typing import List

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.fileio import get
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.datasets.muse_dataset import DatasetFormatError, record_context
from pixellm.registry import TRANSFORMS


def _image_record(results: dict) -> str:
    """Name the record an image belongs to, with the annotation file (the image is the file)."""
    ctx = record_context(results)
    return f'{ctx["record"]} of {ctx["file"]}'


@TRANSFORMS.register_module()
class LoadImageFromFile(BaseTransform):
    """Read ``results['img_path']`` as an RGB ``uint8`` array of shape ``(H, W, 3)``.

    The image is decoded by PIL and converted to RGB (greyscale, palette and RGBA images too). EXIF
    orientation is not applied: COCO's annotations, and so MUSE's, are in the stored pixel layout.
    When the record gives ``height``/``width`` the image must have exactly that size, because
    polygons are rasterised at the record's size and would otherwise be misplaced.

    Required keys: ``img_path``. Optional: ``height``, ``width``, ``img_path_field``,
    ``ann_file``, ``record_index``, ``img_id`` (for error messages).
    Added keys: ``img`` (np.ndarray), ``ori_shape`` (tuple ``(H, W)``), ``img_shape``.

    Raises:
        FileNotFoundError: The image file does not exist; the message names it and the record.
        DatasetFormatError: The file cannot be decoded as an image, or its size differs from the
            record's ``height``/``width``.
    """

    def transform(self, results: dict) -> dict:
        """Load the image.

        Args:
            results (dict): Data info with ``img_path``.

        Returns:
            dict: ``results`` with ``img``, ``ori_shape`` and ``img_shape``.
        """
        path = results['img_path']
        record = _image_record(results)
        field = results.get('img_path_field', 'img_path')
        try:
            data = get(path)
        except FileNotFoundError as err:
            raise FileNotFoundError(f'{path}: image of {record} (from field {field!r}) does not '
                                    'exist; check data_root and data_prefix') from err
        try:
            with Image.open(io.BytesIO(data)) as pil:
                img = np.asarray(pil.convert('RGB'), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetFormatError(path, record, field,
                                     f'the image cannot be decoded ({err})') from err
        h, w = img.shape[:2]
        if 'height' in results and 'width' in results:
            if (h, w) != (results['height'], results['width']):
                raise DatasetFormatError(
                    path, record, 'height/width',
                    f'the image is {h}x{w} (HxW) but the record says '
                    f'{results["height"]}x{results["width"]}')
        results['img'] = img
        results['ori_shape'] = (h, w)
        results['img_shape'] = (h, w)
        return results


def decode_segmentation(segm, height: int, width: int) -> np.ndarray:
    """Decode one COCO-style ``segmentation`` into a boolean ``(H, W)`` mask.

    Polygons are rasterised at ``(height, width)`` and several polygons of one instance are
    merged by union (the official loader sums them, which gives 2 where polygons overlap).
    Uncompressed RLE (``counts`` a list, as COCO's crowd annotations) and compressed RLE
    (``counts`` a string, which the official loader cannot read) are both accepted; an RLE decodes
    at its own ``size``.

    Args:
        segm (list | dict): Polygons ``[[x0, y0, x1, y1, ...], ...]`` or an RLE dict.
        height (int): Image height, used for polygons.
        width (int): Image width, used for polygons.

    Returns:
        np.ndarray: Boolean mask.
    """
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    elif isinstance(segm.get('counts'), list):
        rle = mask_utils.frPyObjects(segm, *segm['size'])
    else:
        counts = segm['counts']
        rle = dict(size=list(segm['size']),
                   counts=counts.encode('ascii') if isinstance(counts, str) else counts)
    return mask_utils.decode(rle).astype(bool)


@TRANSFORMS.register_module()
class DecodeTargetMasks(BaseTransform):
    """Decode the chosen question's targets into ``gt_masks`` at the original image resolution.

    Required keys: ``targets`` (instance dicts with ``segmentation``, from ``SampleQuestion``),
    ``height`` and ``width`` (or ``ori_shape``). Optional: ``question_index`` and the record keys
    used in error messages.
    Added keys: ``gt_masks`` (np.ndarray, bool, ``(N, H, W)``, one per target in answer order).

    Raises:
        DatasetFormatError: A mask's size differs from the image's (field ``segmentation``),
            naming the annotation file, the record, the question and the target.
    """

    def transform(self, results: dict) -> dict:
        """Decode the masks.

        Args:
            results (dict): Pipeline dict after ``SampleQuestion``.

        Returns:
            dict: ``results`` with ``gt_masks``.
        """
        if 'ori_shape' in results:
            img_h, img_w = results['ori_shape']
        else:
            img_h, img_w = results['height'], results['width']
        # Polygons are rasterised at the record's size, as the official loader does; the image
        # check in LoadImageFromFile makes that equal to the image's.
        rec_h, rec_w = results.get('height', img_h), results.get('width', img_w)
        q = results.get('question_index', '?')
        masks: List[np.ndarray] = []
        for t, inst in enumerate(results['targets']):
            mask = decode_segmentation(inst['segmentation'], rec_h, rec_w)
            if mask.shape != (img_h, img_w):
                ctx = record_context(results)
                raise DatasetFormatError(
                    ctx['file'], f'{ctx["record"]}, question {q}, target {t}',
                    f'answers[{q}][{t}].segmentation',
                    f'mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size '
                    f'{img_h}x{img_w} ({results.get("img_path", "image")})')
            masks.append(mask)
        results['gt_masks'] = (np.stack(masks) if masks else
                               np.zeros((0, img_h, img_w), dtype=bool))
        return results
