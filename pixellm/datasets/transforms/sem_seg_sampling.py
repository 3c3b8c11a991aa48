"""Draw the classes (or part instances) present in a semantic/part segmentation image that one
segmentation question asks about.

The drawn names go on as referring phrases, one target each: the official ``sem_seg`` and
``refer_seg`` loaders share the allocation of names to questions and the short question/answer
templates, so ``SampleReferPhrases`` draws and ``BuildReferConversation`` words them.
"""
import logging
from typing import Dict, List, Optional

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log

from pixellm.datasets.muse_dataset import DatasetFormatError, record_context
from pixellm.datasets.transforms.loading import load_label_map
from pixellm.datasets.transforms.refer_conversation import SampleReferPhrases
from pixellm.registry import TRANSFORMS


def target_name(target: dict, part_first: bool) -> str:
    """Name a target in a question: its class, or for a part ``'object part'`` /
    ``'the part of the object'`` (the official loader picks one of the two at random).

    Args:
        target (dict): ``category_name``, or ``object_name`` and ``part_name``.
        part_first (bool): Use ``'the part of the object'`` for a part.

    Returns:
        str: The name.
    """
    if 'part_name' in target:
        obj, part = target['object_name'], target['part_name']
        return f'the {part} of the {obj}' if part_first else f'{obj} {part}'
    return target['category_name']


@TRANSFORMS.register_module()
class SampleSemSegTargets(BaseTransform):
    """Draw the targets of one segmentation question among the classes present in the image.

    Candidates. Label-map items (``seg_map_path``; ADE20K, COCO-Stuff, Mapillary): the label map is
    read, every value in it must be a class (``label_names``) or ignored (``ignore_values``), and
    each class with at least one pixel is a candidate ``dict(category_name, seg_map_path,
    label_values=[value])``, which ``DecodeTargetMasks`` turns into the mask of all pixels of that
    value (ignore pixels are in no mask). COCO-format items (``instances``; PACO-LVIS,
    PASCAL-Part): each annotation is a candidate with its own instance mask; a part is named
    ``'dog head'`` or ``'the head of the dog'`` with equal chance, as officially.

    Drawing, as the official loader: up to ``num_classes_per_sample * num_classes_per_question``
    candidates spread over up to ``num_classes_per_sample`` questions of at most
    ``num_classes_per_question`` each, one question kept (see ``SampleReferPhrases``, which
    draws here with the candidates' names as phrases). With the seed recipe's 3 and 3 an image
    with 3 present classes gives one-class questions and one with 9 or more three-class
    questions; ``num_classes_per_sample=1`` always asks for ``min(num_classes_per_question,
    present)`` classes.

    An image whose label map has no class pixel (only ignored values) cannot be asked about: the
    transform logs it once and returns None, so that mmengine's dataset draws another item, as the
    official loader redraws (a ``test_mode`` dataset raises instead). This is known only once the label map is read, which is why such
    images are not filtered when the dataset is loaded (that would read every label map).

    Required keys: ``seg_map_path``, ``label_names``, ``ignore_values`` (label-map items) or
    ``instances`` (COCO-format items); ``ori_shape`` to check the label map's size.
    Added keys: ``targets``, ``num_targets``, ``phrases`` (the targets' names), ``phrase_targets``
    and ``question`` (the names joined) for ``BuildReferConversation``, the other keys of
    ``SampleReferPhrases``, and for label-map items ``seg_map`` (the raw label map, which
    ``DecodeTargetMasks`` reuses).

    Args:
        num_classes_per_question (int): Most targets in one question. Defaults to 3 (the seed
            recipe's ``--num_classes_per_question``).
        num_classes_per_sample (int): Questions the official loader asks per image. Defaults to 3
            (official).

    Raises:
        DatasetFormatError: A label map holds a value that is neither a class nor ignored, or its
            size differs from the image's.
    """

    def __init__(self, num_classes_per_question: int = 3, num_classes_per_sample: int = 3) -> None:
        self.draw = SampleReferPhrases(num_classes_per_question, num_classes_per_sample)
        self._skipped: set = set()

    def transform(self, results: dict) -> Optional[dict]:
        """Draw the targets.

        Args:
            results (dict): Data info of a ``SemSegQADataset`` after ``LoadImageFromFile``.

        Returns:
            dict or None: ``results`` with the drawn targets; None when nothing can be asked.
        """
        if 'seg_map_path' in results:
            candidates = self._label_map_candidates(results)
        else:
            candidates = [dict(inst) for inst in results['instances']]
        if not candidates:
            self._skip(results)
            return None
        results['questions'] = [target_name(c, bool(np.random.rand() < 0.5))
                                for c in candidates]
        results['answers'] = [[c] for c in candidates]
        return self.draw.transform(results)

    def _label_map_candidates(self, results: dict) -> List[dict]:
        path = results['seg_map_path']
        label_map = load_label_map(path, results)
        names: Dict[int, str] = results['label_names']
        ignore = set(results['ignore_values'])
        values, counts = np.unique(label_map, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            if value not in names and value not in ignore:
                record = f'{results.get("dataset_name", "")} {record_context(results)["record"]}'
                raise DatasetFormatError(
                    path, record.strip(), 'seg_map_path',
                    f'label value {value} ({count} pixels) is not a class: the classes are '
                    f'{len(names)} values in {min(names)}..{max(names)}, the ignored values '
                    f'{sorted(ignore) or "none"}')
        results['seg_map'] = label_map
        return [dict(category_name=names[value], seg_map_path=path, label_values=[value])
                for value in values.tolist() if value in names]

    def _skip(self, results: dict) -> None:
        key = results.get('seg_map_path', results.get('img_path'))
        if key in self._skipped:
            return
        self._skipped.add(key)
        print_log(f'{results.get("dataset_name", "")}: {key} has no class to ask about (only '
                  f'ignored pixels or no annotation); another image is drawn '
                  f'({len(self._skipped)} such images met by this worker)',
                  logger='current', level=logging.WARNING)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_classes_per_question='
                f'{self.draw.num_classes_per_question}, num_classes_per_sample='
                f'{self.draw.num_classes_per_sample})')
