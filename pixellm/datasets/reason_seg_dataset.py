"""ReasonSeg (LISA's reasoning segmentation), read from its labelme files.

Per image ``reason_seg/ReasonSeg/<split>/<name>.jpg`` and ``<name>.json`` (``text``: the
questions, ``is_sentence``, ``shapes``: labelme polygons); optional explanations in
``reason_seg/ReasonSeg/explanatory/train.json``. The target is rasterised once, at load time, as
the official ``get_mask_from_json`` does, and kept as COCO RLE, so the data infos have the shape
:class:`~pixellm.datasets.MUSEDataset` gives.
"""
import glob
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.fileio import join_path
from mmengine.utils import is_abs
from PIL import Image

from pixellm.datasets.dataset_utils import (LAYOUT_DOC, build_pipeline, encode_mask,
                                            missing_file_error, read_json)
from pixellm.datasets.muse_dataset import (DatasetFormatError, InvalidTargetError, SkippedTargets,
                                           describe_record, far_outside)
from pixellm.datasets.transforms.loading import exif_orientation, oriented_size
from pixellm.registry import DATASETS

TARGET_VALUE = 1
IGNORE_VALUE = 255
# ReasonSeg files are mostly utf-8; the official reader falls back to cp1252 for the rest.
LABELME_ENCODINGS = ('utf-8', 'cp1252')


def _point_list(points: Any) -> bool:
    return (isinstance(points, list) and len(points) > 0 and all(
        isinstance(p, (list, tuple)) and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        for p in points))


def labelme_label_mask(shapes: list, height: int, width: int,
                       fail: Callable[[str, str], DatasetFormatError],
                       invalid: Optional[Callable[[str, str], DatasetFormatError]] = None
                       ) -> np.ndarray:
    """Rasterise ReasonSeg's labelme shapes into a label map, as the official reader does.

    Each shape is drawn with OpenCV (its outline, 1 pixel wide, and its filled interior; points
    truncated to integers). Shapes labelled ``flag`` are skipped; shapes whose label contains
    ``ignore`` are drawn with 255, all others (``target``) with 1. Shapes are drawn from the
    largest area to the smallest, so a small shape inside a larger one keeps its own value.

    Args:
        shapes (list): The labelme ``shapes``.
        height (int): Image height.
        width (int): Image width.
        fail (Callable[[str, str], DatasetFormatError]): Builds the error for a field.
        invalid (Callable[[str, str], DatasetFormatError], optional): Builds the error for a shape
            that draws no usable region (fewer than 3 points, wholly outside the image, or no
            pixel); defaults to ``fail``.

    Returns:
        np.ndarray: ``uint8`` ``(height, width)`` map: 0 background, 1 target, 255 ignore.
    """
    invalid = invalid or fail
    drawn, areas = [], []
    for s, shape in enumerate(shapes):
        if not isinstance(shape, dict):
            raise fail(f'shapes[{s}]', f'must be an object, got {type(shape).__name__}')
        label = shape.get('label')
        if not isinstance(label, str):
            raise fail(f'shapes[{s}].label', f'must be a string, got {label!r}')
        if label.lower() == 'flag':  # deprecated annotations without meaning
            continue
        if not _point_list(shape.get('points')):
            raise fail(f'shapes[{s}].points', 'must be a non-empty list of [x, y] pairs')
        points = shape['points']
        if len(points) < 3:
            raise invalid(f'shapes[{s}].points', f'a degenerate polygon of {len(points)} point(s); '
                          'a polygon needs at least 3')
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if not (min(xs) < width and max(xs) >= 0 and min(ys) < height and max(ys) >= 0):
            raise invalid(f'shapes[{s}].points', f'the polygon lies wholly outside the image: '
                          f'points span x {min(xs)}..{max(xs)}, y {min(ys)}..{max(ys)} for an '
                          f'image of width {width} and height {height} (EXIF orientation '
                          'applied)')
        far = far_outside([[v for point in points for v in point]], height, width)
        if far:
            raise invalid(f'shapes[{s}].points', far.replace('polygon 0 has', 'the polygon has'))
        polygon = np.array([points], dtype=np.int32)
        region = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(region, polygon, True, 1, 1)
        cv2.fillPoly(region, polygon, 1)
        if not region.any():
            raise invalid(f'shapes[{s}].points', 'the polygon draws no pixel inside the image')
        value = IGNORE_VALUE if 'ignore' in label.lower() else TARGET_VALUE
        drawn.append((region.astype(bool), value))
        areas.append(int(region.sum()))
    label_map = np.zeros((height, width), dtype=np.uint8)
    # Largest first, with numpy's argsort reversed as the official reader orders them, so that
    # shapes of equal area overlap the same way.
    for k in np.argsort(np.asarray(areas, dtype=np.int64))[::-1]:
        region, value = drawn[k]
        label_map[region] = value
    return label_map


@DATASETS.register_module()
class ReasonSegDataset(BaseDataset):
    """ReasonSeg reasoning segmentation from its per-image labelme json files.

    Every image of the split folder(s) (``*.jpg``, sorted) must have a ``.json`` beside it with
    ``text`` (a list of questions), ``is_sentence`` (full-sentence questions, worded with the
    long templates, or short phrases, worded with the short ones) and ``shapes``.

    Mask semantics (official ``get_mask_from_json``, see :func:`labelme_label_mask`): target
    regions are 1 and ``ignore`` regions 255. The one target of every question is the region
    equal to 1 (the official training mask ``mask == 1``), stored as compressed RLE in
    ``answers``; the ignore region (255) is NOT part of any target and is kept separately as
    ``ignore_segmentation`` (an RLE, or None when the image has none) for evaluation, where the
    official ``validate`` excludes those pixels (``ignore_index=255``).

    Training (``test_mode=False``) gives one item per image with all its questions
    (``SampleQuestion`` draws one). Evaluation gives one item per image with its first question,
    as the official validation does, or one per question with ``test_all_questions=True``.

    Explanations: with ``explanation_file`` each image listed there gets its ``outputs`` text
    as ``explanation``; ``ChooseExplanatoryAnswer(explanatory=...)`` mixes it into answers at
    the official rate.

    Data info keys: ``img_path``, ``img_path_field`` (``'img_path'``), ``img_id`` (the file
    stem), ``record_index`` (position among the split's images), ``ann_file`` (the image's
    json), ``split``, ``height``, ``width``, ``questions``, ``answers`` (per question one
    instance dict: ``id``, ``category_name`` ``'target'``, ``segmentation``), ``text_answers``
    (all None), ``is_sentence``, ``explanation`` (str or None), ``ignore_segmentation``, and
    ``question_index`` in test mode.

    Orientation: an image with an EXIF orientation is used upright, as the annotation tool
    showed it and the official reader (``cv2.imread``) reads it, so the polygons are drawn at
    the upright size and the data info says ``masks_upright=True`` (``LoadImageFromFile`` turns
    the image the same way). ``height``/``width`` are the upright size.

    Errors: a missing split folder, a split without images, an image without its json, or a
    missing ``explanation_file`` raise ``FileNotFoundError`` naming what to prepare; a malformed
    json, an empty ``shapes`` list, bad points or a bad explanation entry raise
    :class:`DatasetFormatError` naming the file, the record and the field. A shape that draws no
    usable region (fewer than 3 points, wholly outside the image, no pixel) and an image without
    a target region raise :class:`InvalidTargetError`, which names the first question too.

    Args:
        split (str | Sequence[str]): ``'train'``, ``'val'``, ``'test'``, or several joined with
            ``'_'`` (``'train_val'``, as the official ``ReasonSeg|train_val``) or as a list.
            Defaults to ``'train'``.
        data_root (str): Root of the official ``dataset`` folder. Defaults to ``''``.
        data_prefix (dict, optional): ``img_path``: the folder holding the split folders.
            Defaults to ``reason_seg/ReasonSeg``.
        explanation_file (str): Explanations json, relative to ``data_root`` unless absolute;
            ``''`` for none. The official one is ``reason_seg/ReasonSeg/explanatory/train.json``.
            Defaults to ``''``.
        test_all_questions (bool): In test mode, one item per question instead of the first
            question of each image. Defaults to False.
        pipeline (Sequence[dict | Callable]): Transforms. Defaults to ``()``.
        test_mode (bool): Evaluation items (see above). Defaults to False.
        lazy_init (bool): Defer reading the files. Defaults to False.
        serialize_data (bool): Keep the data list as one pickled buffer. Defaults to True.
        skip_invalid_targets (bool): Leave out an image whose target is invalid (see above) and
            log how many and which, instead of raising. Defaults to False.
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments.
    """

    METAINFO: dict = dict(dataset_name='ReasonSeg')

    def __init__(self,
                 split: Union[str, Sequence[str]] = 'train',
                 data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 explanation_file: str = '',
                 test_all_questions: bool = False,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 skip_invalid_targets: bool = False,
                 **kwargs) -> None:
        self.skip_invalid_targets = skip_invalid_targets
        self.splits = split.split('_') if isinstance(split, str) else list(split)
        if not self.splits or not all(isinstance(s, str) and s for s in self.splits):
            raise ValueError(f'ReasonSegDataset: split must name one or more split folders, got '
                             f'{split!r}')
        self._prefix_rel = dict(img_path='reason_seg/ReasonSeg')
        self._prefix_rel.update(data_prefix or {})
        self._explanation_file_rel = explanation_file
        self.explanation_file = explanation_file
        self.test_all_questions = test_all_questions
        super().__init__(ann_file='', data_root=data_root, data_prefix=dict(self._prefix_rel),
                         pipeline=build_pipeline(pipeline), test_mode=test_mode,
                         lazy_init=lazy_init, serialize_data=serialize_data, **kwargs)

    def _join_prefix(self) -> None:
        super()._join_prefix()
        if self.explanation_file and not is_abs(self.explanation_file) and self.data_root:
            self.explanation_file = join_path(self.data_root, self.explanation_file)

    def _read_explanations(self) -> Dict[str, str]:
        if not self.explanation_file:
            return {}
        items = read_json(self.explanation_file, list, 'a json list of entries',
                          'ReasonSegDataset', 'explanation file', self._explanation_file_rel,
                          self.data_root)
        explanations = {}
        for index, item in enumerate(items):
            for key in ('image', 'outputs'):
                value = item.get(key) if isinstance(item, dict) else None
                if not isinstance(value, str) or not value.strip():
                    raise DatasetFormatError(self.explanation_file, describe_record(index), key,
                                             f'must be a non-empty string, got {value!r}')
            explanations[item['image']] = item['outputs']
        return explanations

    def _split_images(self, split: str) -> List[str]:
        folder = osp.join(self.data_prefix['img_path'], split)
        prepare = osp.join(self._prefix_rel['img_path'], split)
        if not osp.isdir(folder):
            raise missing_file_error('ReasonSegDataset', f'split folder of {split!r}', folder,
                                     prepare, self.data_root)
        images = sorted(glob.glob(osp.join(folder, '*.jpg')))
        if not images:
            raise FileNotFoundError(
                f'ReasonSegDataset: the split folder {folder!r} holds no *.jpg image. Prepare '
                f"'{prepare}/<name>.jpg' with '<name>.json' beside each under data_root="
                f'{self.data_root!r}; {LAYOUT_DOC} shows the expected folder layout.')
        return images

    def parse_image(self, img_path: str, index: int, split: str,
                    explanations: Dict[str, str]) -> dict:
        """Read one image's labelme json and build its data info.

        Args:
            img_path (str): The ``.jpg``.
            index (int): Its position among the split's images.
            split (str): The split folder it is in.
            explanations (dict): Image file name to explanation.

        Returns:
            dict: The per-image data info (see the class docstring).

        Raises:
            FileNotFoundError: The json is missing.
            DatasetFormatError: Naming the json, the record and the field at fault.
        """
        stem = osp.splitext(osp.basename(img_path))[0]
        json_path = osp.splitext(img_path)[0] + '.json'
        where = describe_record(index, stem)

        def fail(field: str, problem: str) -> DatasetFormatError:
            return DatasetFormatError(json_path, where, field, problem)

        anno = read_json(json_path, dict, 'a labelme json object', 'ReasonSegDataset',
                         f'annotation of image {img_path!r}',
                         osp.join(self._prefix_rel['img_path'], split, stem + '.json'),
                         self.data_root, LABELME_ENCODINGS)
        for key in ('text', 'is_sentence', 'shapes'):
            if key not in anno:
                raise fail(key, 'missing')
        texts = anno['text']
        if not isinstance(texts, list) or not texts:
            raise fail('text', f'must be a non-empty list of questions, got {texts!r}')
        for t, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise fail(f'text[{t}]', f'must be a non-empty string, got {text!r}')
        if not isinstance(anno['is_sentence'], bool):
            raise fail('is_sentence', f'must be true or false, got {anno["is_sentence"]!r}')
        shapes = anno['shapes']
        if not isinstance(shapes, list):
            raise fail('shapes', f'must be a list, got {type(shapes).__name__}')
        if not shapes:
            raise fail('shapes', 'empty annotation list: the image has no polygon')
        try:
            with Image.open(img_path) as img:
                # The upright size: the annotation tool showed the image turned by its EXIF
                # orientation, and the official reader draws the polygons at that size.
                height, width = oriented_size(img.height, img.width, exif_orientation(img))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetFormatError(img_path, f'{where} of {json_path}', 'img_path',
                                     f'the image cannot be read ({err})') from err

        def invalid(field: str, problem: str) -> InvalidTargetError:
            return InvalidTargetError(json_path, f'{where}, question 0 {texts[0].strip()!r}',
                                      field, problem)

        label_map = labelme_label_mask(shapes, height, width, fail, invalid)
        target = label_map == TARGET_VALUE
        if not target.any():
            raise invalid('shapes', 'no target region: every shape is "flag" or "ignore", or the '
                          'ignore regions cover the targets (an empty mask)')
        ignore = label_map == IGNORE_VALUE
        instance = dict(id=stem, category_name='target', segmentation=encode_mask(target))
        questions = [text.strip() for text in texts]
        return dict(img_path=img_path, img_path_field='img_path', img_id=stem,
                    record_index=index, ann_file=json_path, split=split, height=height,
                    width=width, questions=questions,
                    answers=[[instance] for _ in questions],
                    text_answers=[None] * len(questions), is_sentence=anno['is_sentence'],
                    explanation=explanations.get(osp.basename(img_path)),
                    ignore_segmentation=encode_mask(ignore) if ignore.any() else None,
                    masks_upright=True)

    def load_data_list(self) -> List[dict]:
        """Read every image's json of the split(s) and the explanations.

        Returns:
            list[dict]: Per image (train, and test by default) or per question
            (``test_all_questions``).
        """
        explanations = self._read_explanations()
        data_list = []
        for split in self.splits:
            folder = osp.join(self.data_prefix['img_path'], split)
            skipped = SkippedTargets('ReasonSegDataset', folder, self.skip_invalid_targets)
            for index, img_path in enumerate(self._split_images(split)):
                try:
                    info = self.parse_image(img_path, index, split, explanations)
                except InvalidTargetError as err:
                    skipped.drop(err, with_file=True)
                    continue
                if not self.test_mode:
                    data_list.append(info)
                elif self.test_all_questions:
                    data_list.extend(dict(info, question_index=q)
                                     for q in range(len(info['questions'])))
                else:
                    data_list.append(dict(info, question_index=0))
            skipped.log()
        return data_list
