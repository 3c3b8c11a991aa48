"""``RenderSemanticMap``: every annotated object of a MUSE record painted into one label map."""
import numpy as np
from mmcv.transforms import BaseTransform

from pixellm.datasets.muse_dataset import DatasetFormatError, check_segmentation, record_context
from pixellm.datasets.transforms.loading import (decode_segmentation, image_and_record_size,
                                                 orient_mask)
from pixellm.registry import TRANSFORMS


@TRANSFORMS.register_module()
class RenderSemanticMap(BaseTransform):
    """Paint every annotated object of the image into one semantic label map, ``gt_seg_map``.

    A pixel holds the ``category_id`` of the object covering it (COCO and LVIS ids, or the
    demo's shape ids) and 0 where no object is (background). Objects are painted in ``ann_list``
    order, so where two overlap the later one wins. The map is at the original resolution, like
    the target masks; the model resizes it. It is the target of
    :class:`VisionEncoderPretrainer`, with which the demo pre-trains its randomly initialised
    CLIP tower on the MUSE training images.

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
        (img_h, img_w), (rec_h, rec_w) = image_and_record_size(results)

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
            try:
                mask = orient_mask(decode_segmentation(segm, rec_h, rec_w), results)
            except ValueError as err:  # pycocotools: 'Invalid RLE mask representation'
                raise fail(f'ann_list[{index}].segmentation',
                           f'the RLE cannot be decoded ({err})') from None
            if mask.shape != (img_h, img_w):
                raise fail(f'ann_list[{index}].segmentation',
                           f'mask size {mask.shape[0]}x{mask.shape[1]} differs from the image size '
                           f'{img_h}x{img_w} ({results.get("img_path", "image")})')
            seg_map[mask.astype(bool)] = category
        results['gt_seg_map'] = seg_map
        return results
