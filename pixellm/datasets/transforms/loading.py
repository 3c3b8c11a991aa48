"""Load a dataset record's image and decode its target masks (COCO polygons and RLE, or the
pixels of given values in a PNG label map)."""
import io
from typing import Any, Dict, List

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.fileio import get
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.datasets.muse_dataset import (DatasetFormatError, InvalidTargetError,
                                           check_segmentation, record_context)
from pixellm.registry import TRANSFORMS


# The EXIF tag that says how a stored image is turned to be shown upright.
EXIF_ORIENTATION_TAG = 0x0112


def exif_orientation(image: Image.Image) -> int:
    """Return an image's EXIF orientation (1 to 8; 1, upright, when absent or unreadable).

    Args:
        image (PIL.Image.Image): An opened image.

    Returns:
        int: The orientation value of the EXIF standard.
    """
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  -- a corrupt EXIF block is no orientation
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(height: int, width: int, orientation: int) -> tuple:
    """``(height, width)`` of an image of that stored size once its EXIF orientation is applied."""
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an image or mask array stored in the file's pixel layout upright, as its EXIF
    orientation says (the same transposition as ``PIL.ImageOps.exif_transpose``).

    Args:
        array (np.ndarray): ``(H, W)`` or ``(H, W, C)`` array in the stored layout.
        orientation (int): EXIF orientation, 1 to 8.

    Returns:
        np.ndarray: The upright array (contiguous).
    """
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = np.rot90(array, -1)
    elif orientation == 7:
        array = np.rot90(array.swapaxes(0, 1), 2)
    elif orientation == 8:
        array = np.rot90(array, 1)
    return np.ascontiguousarray(array)


def orient_mask(mask: np.ndarray, results: dict) -> np.ndarray:
    """Apply the sample image's EXIF orientation to a mask in the stored pixel layout.

    A record whose masks were drawn on the upright image (``masks_upright``, ReasonSeg) is
    returned as it is.

    Args:
        mask (np.ndarray): ``(H, W)`` mask or label map.
        results (dict): The pipeline dict; ``exif_orientation`` comes from ``LoadImageFromFile``.

    Returns:
        np.ndarray: The mask in the layout of ``results['img']``.
    """
    if results.get('masks_upright'):
        return mask
    return apply_orientation(mask, results.get('exif_orientation', 1))


def _image_record(results: dict) -> str:
    """Name the record an image belongs to, with the annotation file (the image is the file)."""
    ctx = record_context(results)
    return f'{ctx["record"]} of {ctx["file"]}'


@TRANSFORMS.register_module()
class LoadImageFromFile(BaseTransform):
    """Read ``results['img_path']`` as an RGB ``uint8`` array of shape ``(H, W, 3)``.

    The image is decoded by PIL and converted to RGB (greyscale, palette and RGBA images too).

    Orientation, one rule for every dataset: the image is turned upright by its EXIF orientation
    (as ``cv2.imread`` in the official loaders and the annotation tools show it), and every mask
    is shown on it the same way. Masks kept in the file's stored pixel layout (COCO-style
    polygons and RLE, PNG label maps) get the same transposition when they are decoded
    (:func:`orient_mask`); masks drawn on the upright image (ReasonSeg's labelme polygons, whose
    records set ``masks_upright``) are used as they are. The record's ``height``/``width`` must
    be the stored size, or the upright size for a ``masks_upright`` record, because polygons are
    rasterised at the record's size and would otherwise be misplaced.

    Required keys: ``img_path``. Optional: ``height``, ``width``, ``masks_upright``,
    ``img_path_field``, ``ann_file``, ``record_index``, ``img_id`` (for error messages).
    Added keys: ``img`` (np.ndarray, upright), ``ori_shape`` (tuple ``(H, W)``, upright),
    ``img_shape``, ``exif_orientation`` (int, 1 when the file has none).

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
        except OSError as err:  # a folder, no permission
            raise DatasetFormatError(path, record, field,
                                     f'the image cannot be read ({err.strerror or err})') from err
        try:
            with Image.open(io.BytesIO(data)) as pil:
                orientation = exif_orientation(pil)
                stored = np.asarray(pil.convert('RGB'), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetFormatError(path, record, field,
                                     f'the image cannot be decoded ({err})') from err
        img = apply_orientation(stored, orientation)
        h, w = img.shape[:2]
        if 'height' in results and 'width' in results:
            upright = bool(results.get('masks_upright'))
            expected = (h, w) if upright else stored.shape[:2]
            if expected != (results['height'], results['width']):
                layout = 'upright (EXIF orientation applied)' if upright else 'stored'
                raise DatasetFormatError(
                    path, record, 'height/width',
                    f'the image is {expected[0]}x{expected[1]} (HxW, {layout}) but the record '
                    f'says {results["height"]}x{results["width"]}')
        results['img'] = img
        results['ori_shape'] = (h, w)
        results['img_shape'] = (h, w)
        results['exif_orientation'] = orientation
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


def _label_map_record(path: str, results: dict) -> str:
    """Name the record a label map belongs to; the map is often the record's annotation file."""
    ctx = record_context(results)
    return ctx['record'] if ctx['file'] == path else f'{ctx["record"]} of {ctx["file"]}'


# PIL modes of a label map that holds one class index per pixel (palette, 8-bit, 16/32-bit).
_LABEL_MAP_MODES = ('P', 'L', 'I', 'I;16', 'I;16B', 'I;16L')


def load_label_map(path: str, results: dict) -> np.ndarray:
    """Read a PNG label map as its raw pixel values, checked against the sample's image size.

    A palette (``P``) map gives its palette indices, as ``np.array(Image.open(path))`` does in
    the official loaders; greyscale and 16-bit maps give their values.

    Args:
        path (str): The label map file.
        results (dict): The pipeline dict; ``ori_shape`` (from ``LoadImageFromFile``) is the
            size the map must have, and the record keys name the record in errors.

    Returns:
        np.ndarray: Integer ``(H, W)`` array of raw label values, turned as the sample's image
        (see :func:`orient_mask`).

    Raises:
        FileNotFoundError: The file does not exist.
        DatasetFormatError: The file is not a readable single-channel image, or its size differs
            from the image's (field ``seg_map_path``).
    """
    record = _label_map_record(path, results)
    try:
        data = get(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f'{path}: label map of {record} does not exist; check data_root '
                                'and data_prefix') from err
    try:
        with Image.open(io.BytesIO(data)) as pil:
            mode = pil.mode
            label_map = np.array(pil)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetFormatError(path, record, 'seg_map_path',
                                 f'the label map cannot be decoded ({err})') from err
    if mode not in _LABEL_MAP_MODES:
        raise DatasetFormatError(path, record, 'seg_map_path',
                                 f'a label map holds one class index per pixel (a palette or '
                                 f'single-channel PNG), got PIL mode {mode!r}')
    label_map = orient_mask(label_map, results)
    check_label_map_size(label_map, path, results)
    return label_map


def check_label_map_size(label_map: np.ndarray, path: str, results: dict) -> None:
    """Raise unless ``label_map`` has the size of the sample's image (``results['ori_shape']``).

    Args:
        label_map (np.ndarray): The ``(H, W)`` label map.
        path (str): Its file, for the error.
        results (dict): The pipeline dict; without ``ori_shape`` nothing is checked.

    Raises:
        DatasetFormatError: The sizes differ (field ``seg_map_path``).
    """
    if 'ori_shape' in results and label_map.shape != tuple(results['ori_shape']):
        img_h, img_w = results['ori_shape']
        raise DatasetFormatError(
            path, _label_map_record(path, results), 'seg_map_path',
            f'the label map is {label_map.shape[0]}x{label_map.shape[1]} (HxW) but its image '
            f'{results.get("img_path", "")} is {img_h}x{img_w}')


def image_and_record_size(results: dict):
    """Return ``(image (h, w), record (h, w))``: the loaded image's size (``ori_shape``, else the
    record's) and the record's, at which polygons are rasterised, as the official loader does;
    the image check in LoadImageFromFile makes the two equal."""
    if 'ori_shape' in results:
        img_h, img_w = results['ori_shape']
    else:
        img_h, img_w = results['height'], results['width']
    return (img_h, img_w), (results.get('height', img_h), results.get('width', img_w))


def _target_context(results: dict, q: Any, t: int, inst: dict) -> Dict[str, str]:
    """``file`` and ``record`` of an error about target ``t`` of question ``q``: the record, the
    question's text and the target's id."""
    ctx = record_context(results)
    question = results.get('question')
    if question is None and isinstance(q, int) and q < len(results.get('questions') or ()):
        question = results['questions'][q]
    text = f', question {q}' + (f' {question!r}' if isinstance(question, str) else '')
    target = f', target {t}' + (f' (id={inst["id"]})' if 'id' in inst else '')
    return dict(file=ctx['file'], record=f'{ctx["record"]}{text}{target}')


@TRANSFORMS.register_module()
class DecodeTargetMasks(BaseTransform):
    """Decode the chosen question's targets into ``gt_masks`` at the original image resolution.

    A target is one of two kinds:

    - an instance annotation with ``segmentation`` (COCO polygons or RLE; MUSE, PACO-LVIS,
      PASCAL-Part), decoded by :func:`decode_segmentation`;
    - a label-map target with ``seg_map_path`` (a PNG label map) and ``label_values`` (raw pixel
      values of that map): its mask is every pixel holding one of those values (semantic
      segmentation sources: ADE20K, COCO-Stuff, Mapillary Vistas). Each label map is read once per
      sample, or taken from ``results['seg_map']`` when ``results['seg_map_path']`` names it (the
      class sampler has read it already). Ignore pixels (ADE20K's 0, the value 255, ...) are in no
      target's ``label_values``, so they belong to no mask: the loss sees them as background, as
      the official masks ``label == class_id`` do.

    A record may also carry ``ignore_segmentation`` (ReasonSeg's "ignore" polygons, as COCO RLE or
    polygons; None when absent): it is decoded into ``gt_ignore``, the pixels the official
    evaluation leaves out of every intersection and union (its label 255). Training ignores it,
    as the official training masks (``mask == 1``) do.

    Required keys: ``targets`` (from ``SampleQuestion`` or ``SampleSemSegTargets``), ``height`` and
    ``width`` (or ``ori_shape``). Optional: ``question_index``, ``seg_map_path``/``seg_map``,
    ``ignore_segmentation`` and the record keys used in error messages.
    Added keys: ``gt_masks`` (np.ndarray, bool, ``(N, H, W)``, one per target in answer order;
    ``(0, H, W)`` when there is no target); ``gt_ignore`` (np.ndarray, bool, ``(H, W)``) when the
    record has an ignore region.

    Masks in the stored pixel layout are turned as the image was (see ``LoadImageFromFile``).

    Raises:
        DatasetFormatError: A mask's size differs from the image's (field ``segmentation``, or
            ``seg_map_path`` for a label map), naming the annotation file or label map, the record,
            the question and the target.
        InvalidTargetError: A target is malformed, has RLE counts pycocotools cannot decode, or
            decodes to an empty mask (only a gRefCOCO no-target expression's merged target,
            flagged ``no_target``, may be empty); the error names the record, the question and
            the target.
    """

    def transform(self, results: dict) -> dict:
        """Decode the masks.

        Args:
            results (dict): Pipeline dict after ``SampleQuestion``.

        Returns:
            dict: ``results`` with ``gt_masks``.
        """
        (img_h, img_w), (rec_h, rec_w) = image_and_record_size(results)
        q = results.get('question_index', '?')
        masks: List[np.ndarray] = []
        label_maps: Dict[str, np.ndarray] = {}
        for t, inst in enumerate(results['targets']):
            if 'seg_map_path' in inst:
                masks.append(self._label_map_mask(inst, results, label_maps))
                continue
            field = f'answers[{q}][{t}].segmentation'
            segm = inst['segmentation']
            # The format only; a size other than the image's is reported after decoding.
            size = segm.get('size') if isinstance(segm, dict) else None
            size = size if isinstance(size, list) and len(size) == 2 else [rec_h, rec_w]
            problem = check_segmentation(segm, *size)
            if problem:
                raise InvalidTargetError(**_target_context(results, q, t, inst), field=field,
                                         problem=problem)
            try:
                mask = decode_segmentation(inst['segmentation'], rec_h, rec_w)
            except ValueError as err:  # pycocotools: 'Invalid RLE mask representation'
                raise InvalidTargetError(**_target_context(results, q, t, inst), field=field,
                                         problem=f'the RLE cannot be decoded ({err})') from None
            mask = orient_mask(mask, results)
            if mask.shape != (img_h, img_w):
                raise DatasetFormatError(
                    **_target_context(results, q, t, inst), field=field,
                    problem=f'mask size {mask.shape[0]}x{mask.shape[1]} differs from the image '
                    f'size {img_h}x{img_w} ({results.get("img_path", "image")})')
            if not mask.any() and not inst.get('no_target'):
                raise InvalidTargetError(
                    **_target_context(results, q, t, inst), field=field,
                    problem='the target decodes to an empty mask (no pixel inside the image)')
            masks.append(mask)
        results['gt_masks'] = (np.stack(masks) if masks else
                               np.zeros((0, img_h, img_w), dtype=bool))
        if results.get('ignore_segmentation') is not None:
            ignore = orient_mask(decode_segmentation(results['ignore_segmentation'], rec_h, rec_w),
                                 results)
            if ignore.shape != (img_h, img_w):
                ctx = record_context(results)
                raise DatasetFormatError(
                    ctx['file'], ctx['record'], 'ignore_segmentation',
                    f'mask size {ignore.shape[0]}x{ignore.shape[1]} differs from the image size '
                    f'{img_h}x{img_w} ({results.get("img_path", "image")})')
            results['gt_ignore'] = ignore
        return results

    @staticmethod
    def _label_map_mask(inst: dict, results: dict, label_maps: Dict[str, np.ndarray]) -> np.ndarray:
        path = inst['seg_map_path']
        if path not in label_maps:
            if results.get('seg_map_path') == path and 'seg_map' in results:
                label_maps[path] = results['seg_map']
                check_label_map_size(label_maps[path], path, results)
            else:
                label_maps[path] = load_label_map(path, results)
        return np.isin(label_maps[path], inst['label_values'])
