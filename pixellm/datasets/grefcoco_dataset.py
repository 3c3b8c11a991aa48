"""gRefCOCO generalised referring segmentation: expressions with several targets or none.

Read from the official files, ``refer_seg/grefcoco/grefs(unc).json`` and ``instances.json``, with
COCO train2014 images; the data infos are those of :class:`ReferSegDataset`.
"""
from typing import Any, Callable, Dict, List, Optional

from pixellm.datasets.dataset_utils import has_key, is_int, merge_segmentations
from pixellm.datasets.muse_dataset import DatasetFormatError
from pixellm.datasets.refer_dataset import NO_TARGET_ANN_ID, ReferSegDataset
from pixellm.registry import DATASETS


def _is_crowd(ann: dict) -> bool:
    return bool(ann.get('iscrowd')) if isinstance(ann, dict) else False


@DATASETS.register_module()
class GRefCOCODataset(ReferSegDataset):
    """gRefCOCO: a referring expression names any number of objects, possibly none.

    A gRefCOCO ref has a list ``ann_id`` (several objects for a multi-target expression,
    ``[-1]`` for a no-target one, which also carries ``no_target: true``) and ``split`` one of
    ``train``, ``val``, ``testA``, ``testB`` (matched exactly, as ``G_REFER`` does). Items are
    built as in :class:`ReferSegDataset`: per image in training, per sentence in test mode.

    Targets of an expression:

    - ``merge_targets=False`` (default): one target per object, in ``ann_id`` order, so a
      multi-target expression is answered with one codebook token group per object; a no-target
      expression has zero targets (an empty ``gt_masks`` of shape ``(0, H, W)``). Its answer
      (``BuildReferConversation``) reads ``'Sorry, there is no such object in this image.'``,
      with no ``{seg}``. The official loader cannot express zero targets (see below), so this
      wording is ours.
    - ``merge_targets=True``: the official behaviour (``refer_seg_dataset.py``): one target per
      expression whose mask is the union of its objects; a no-target expression gets one
      all-empty mask and the usual one-``{seg}`` answer (e.g. ``'It is {seg}.'``). This is also
      the form gRefCOCO's gIoU/cIoU are defined on.

    ``no_target`` in the data info flags the no-target expressions either way (for N-acc style
    metrics). A no-target expression's empty target (zero masks, or one all-empty merged mask)
    is legitimate and is the only empty target accepted; every object target is validated as in
    :class:`ReferSegDataset`.

    Crowd annotations (``iscrowd`` set) are no target: as gRefCOCO's own ``G_REFER`` does, they
    are left out of an expression's objects (and of its merged mask). An expression whose every
    object is a crowd region is left out, counted in a warning.

    Errors, besides those of :class:`ReferSegDataset`: an empty ``ann_id`` list, ``-1`` mixed
    with object ids, and a ``no_target`` flag that contradicts ``ann_id`` raise
    :class:`DatasetFormatError` naming the refs file, the ref and the field.

    Args:
        split (str): ``'train'``, ``'val'``, ``'testA'`` or ``'testB'``. Defaults to
            ``'train'``.
        split_by (str): REFER ``splitBy``. Defaults to ``'unc'``.
        merge_targets (bool): One union target per expression (official) instead of one per
            object. Defaults to False.
        **kwargs: The other :class:`ReferSegDataset` arguments (``data_root``, ``data_prefix``,
            ``pipeline``, ``test_mode``, ...). ``ann_file`` defaults to
            ``refer_seg/grefcoco/grefs(<split_by>).json`` (a ``.p`` pickle is read too), the
            images to ``refer_seg/images/mscoco/images/train2014``.
    """

    METAINFO: dict = dict(dataset_name='grefcoco')
    KNOWN_DATASETS = ('grefcoco', )
    REFS_FILE_FORMAT = 'grefs({split_by}).json'

    def __init__(self,
                 split: str = 'train',
                 split_by: str = 'unc',
                 merge_targets: bool = False,
                 **kwargs) -> None:
        self.merge_targets = merge_targets
        super().__init__(dataset_name='grefcoco', split=split, split_by=split_by, **kwargs)

    def _in_split(self, ref_split: str) -> bool:
        return ref_split == self.split

    def _ann_ids(self, ref: dict, fail: Callable[[str, str], DatasetFormatError]) -> List[int]:
        ann_ids = ref['ann_id']
        ann_ids = [ann_ids] if is_int(ann_ids) else ann_ids
        if not isinstance(ann_ids, list) or not all(is_int(a) for a in ann_ids):
            raise fail('ann_id', f'must be a list of integer annotation ids, got {ann_ids!r}')
        if not ann_ids:
            raise fail('ann_id', 'empty annotation list: a no-target expression has [-1]')
        if NO_TARGET_ANN_ID in ann_ids and len(ann_ids) > 1:
            raise fail('ann_id', f'{NO_TARGET_ANN_ID} (no target) mixed with object ids '
                       f'{ann_ids}')
        no_target = ann_ids == [NO_TARGET_ANN_ID]
        flag = ref.get('no_target')
        if flag is not None and bool(flag) != no_target:
            raise fail('no_target', f'is {flag!r} but ann_id is {ann_ids}')
        return ann_ids

    def _check_ref_category(self, ref: dict, cats: dict,
                            fail: Callable[[str, str], DatasetFormatError]) -> None:
        # A gRefCOCO ref lists its objects' categories (none for no-target refs); each target's
        # category is checked on its annotation instead.
        return None

    def _targets(self, ann_ids: List[int], image: dict, tables: dict, cache: Dict[Any, dict],
                 fail: Callable[[str, str], DatasetFormatError]) -> Optional[List[dict]]:
        if ann_ids == [NO_TARGET_ANN_ID]:
            objects = []
        else:
            # Crowd regions are no target, as in gRefCOCO's own G_REFER.getMaskByRef.
            kept = [ann_id for ann_id in ann_ids
                    if not (has_key(tables['anns'], ann_id)
                                 and _is_crowd(tables['anns'][ann_id][1]))]
            if not kept:
                return None
            objects = [self._instance(ann_id, image, tables, cache, fail) for ann_id in kept]
        if not self.merge_targets:
            return objects
        if len(objects) == 1:
            return objects
        key = ('merged', image['id'], tuple(ann_ids))
        if key not in cache:
            names = list(dict.fromkeys(inst['category_name'] for inst in objects))
            cache[key] = dict(
                id=list(ann_ids), category_name=', '.join(names),
                # The official empty target of a no-target expression: its empty mask is valid.
                no_target=not objects,
                segmentation=merge_segmentations([inst['segmentation'] for inst in objects],
                                                 image['height'], image['width']))
        return [cache[key]]
