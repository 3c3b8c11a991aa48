"""Load a dataset record's image and decode its target masks (COCO polygons and RLE, or the
pixels of given values in a PNG label map)."""
import io
from typing import Dict, List

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.fileio import get
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.datasets.muse_dataset import DatasetFormatError, check_segmentation, record_context
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
        np.ndarray: Integer ``(H, W)`` array of raw label values.

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


def _image_and_record_size(results: dict):
    """Return ``(image (h, w), record (h, w))``: the loaded image's size (``ori_shape``, else the
    record's) and the record's, at which polygons are rasterised, as the official loader does;
    the image check in LoadImageFromFile makes the two equal."""
    if 'ori_shape' in results:
        img_h, img_w = results['ori_shape']
    else:
        img_h, img_w = results['height'], results['width']
    return (img_h, img_w), (results.get('height', img_h), results.get('width', img_w))


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

    Raises:
        DatasetFormatError: A mask's size differs from the image's (field ``segmentation``, or
            ``seg_map_path`` for a label map), naming the annotation file or label map, the record,
            the question and the target.
    """

    def transform(self, results: dict) -> dict:
        """Decode the masks.

        Args:
            results (dict): Pipeline dict after ``SampleQuestion``.

        Returns:
            dict: ``results`` with ``gt_masks``.
        """
        (img_h, img_w), (rec_h, rec_w) = _image_and_record_size(results)
        q = results.get('question_index', '?')
        masks: List[np.ndarray] = []
        label_maps: Dict[str, np.ndarray] = {}
        for t, inst in enumerate(results['targets']):
            if 'seg_map_path' in inst:
                masks.append(self._label_map_mask(inst, results, label_maps))
                continue
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
        if results.get('ignore_segmentation') is not None:
            ignore = decode_segmentation(results['ignore_segmentation'], rec_h, rec_w)
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


@TRANSFORMS.register_module()
class RenderSemanticMap(BaseTransform):
    """Paint every annotated object of the image into one semantic label map, ``gt_seg_map``.

    A pixel holds the ``category_id`` of the object covering it (COCO and LVIS ids, or the
    demo's shape ids) and 0 where no object is (background). Objects are painted in ``ann_list``
    order, so where two overlap the later one wins. The map is at the original resolution, like
    the target masks; the model resizes it. It is the target of
    :class:`~pixellm.models.VisionEncoderPretrainer`, with which the demo pre-trains its randomly
    initialised CLIP tower on the MUSE training images.

    Required keys: ``all_segmentations``, ``all_category_ids``, ``all_ann_indices`` and
    ``ann_list_skipped`` (the data infos of ``MUSEDataset``), ``height`` and ``width`` (or
    ``ori_shape``).
    Added keys: ``gt_seg_map`` (np.ndarray, int32, ``(H, W)``).

    Raises:
        KeyError: The data info is not a ``MUSEDataset`` one.
        DatasetFormatError: The record has no ``ann_list`` list; or an entry of it is not an
            object with a ``segmentation``, has no positive integer ``category_id``, a malformed
            ``segmentation`` or a mask whose size differs from the image's. The error names the
            annotation file, the record and the field (``ann_list``, ``ann_list[i]``,
            ``ann_list[i].category_id`` or ``ann_list[i].segmentation``).
    """

    def transform(self, results: dict) -> dict:
        """Render the map.

        Args:
            results (dict): Pipeline dict of a ``MUSEDataset`` item.

        Returns:
            dict: ``results`` with ``gt_seg_map``.
        """
        needed = ('all_segmentations', 'all_category_ids', 'all_ann_indices', 'ann_list_skipped')
        missing = [k for k in needed if k not in results]
        if missing:
            raise KeyError(f'RenderSemanticMap reads the data infos of MUSEDataset (every object '
                           f'of the image, from ann_list); this item has no {missing}')
        (img_h, img_w), (rec_h, rec_w) = _image_and_record_size(results)

        def fail(field: str, problem: str) -> DatasetFormatError:
            ctx = record_context(results)
            return DatasetFormatError(ctx['file'], ctx['record'], field, problem)

        indices = results['all_ann_indices']
        if indices is None:
            raise fail('ann_list', 'missing or not a list: the semantic map needs every object of '
                       'the image')
        if results['ann_list_skipped']:
            raise fail(f'ann_list[{results["ann_list_skipped"][0]}]', 'not an object with a '
                       'segmentation: the semantic map would show this object as background')
        seg_map = np.zeros((img_h, img_w), dtype=np.int32)
        for segm, category, index in zip(results['all_segmentations'],
                                          results['all_category_ids'], indices):
            if not isinstance(category, int) or isinstance(category, bool) or category < 1:
                raise fail(f'ann_list[{index}].category_id',
                           f'must be a positive integer to be a label value, got {category!r}')
            problem = check_segmentation(segm, rec_h, rec_w)
            if problem:
                raise fail(f'ann_list[{index}].segmentation', problem)
            mask = decode_segmentation(segm, rec_h, rec_w)
            if mask.shape != (img_h, img_w):
                raise fail(f'ann_list[{index}].segmentation',
                           f'mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size '
                           f'{img_h}x{img_w} ({results.get("img_path", "image")})')
            seg_map[mask.astype(bool)] = category
        results['gt_seg_map'] = seg_map
        return results
