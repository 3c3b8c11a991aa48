"""Semantic and part segmentation datasets asked as segmentation questions (PixelLM's ``sem_seg``).

Five sources, read in their released on-disk formats under one ``data_root`` laid out as the
official PixelLM README's tree: label-map sources (ADE20K, COCO-Stuff, Mapillary Vistas v2.0), where
a class's target is every pixel of its label value, and COCO-format part sources (PACO-LVIS,
PASCAL-Part), where a target is one annotated instance. Which classes a sample asks about is drawn
when it is fetched (``SampleSemSegTargets``); ``BuildReferConversation`` words the question and
the answer with the official short templates. A training pipeline::

    LoadImageFromFile -> SampleSemSegTargets -> DecodeTargetMasks -> BuildReferConversation
    -> ExpandSegTokens -> TokenizeConversation -> ResizeLongestSide -> PackPixelLMInputs
"""
import logging
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from mmengine.dataset import BaseDataset
from mmengine.fileio import isdir, list_dir_or_file
from mmengine.logging import print_log

from pixellm.datasets.dataset_utils import (build_pipeline, clean_polygons, has_key, is_int,
                                            missing_file_error, parse_json, read_bytes)
from pixellm.datasets.muse_dataset import (DatasetFormatError, InvalidTargetError, SkippedTargets,
                                           check_target, describe_record)
from pixellm.registry import DATASETS

# The class lists shipped with the package (see metainfo/README.md for their source).
METAINFO_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'metainfo')

# The instance keys a COCO-format target keeps; area, bbox and iscrowd are not read.
_KEPT_INSTANCE_KEYS = ('id', 'category_id', 'segmentation')


class SemSegQADataset(BaseDataset):
    """Base of the semantic/part segmentation datasets that PixelLM trains on as questions.

    One item per image (an epoch visits every image once); the pipeline draws the classes that
    the item's question asks about each time it is fetched. The official loader instead draws a
    random image of a random source on every ``__getitem__`` and asks up to three questions per
    image; mixing sources and sampling rates is left to the dataset wrapper or sampler here.

    Errors name the dataset, the file and the record: a missing folder or annotation file raises
    ``FileNotFoundError`` with the path to prepare, a malformed file or record
    :class:`DatasetFormatError`.

    Args:
        ann_file (str, optional): The source's annotation or class-config file, relative to
            ``data_root`` unless absolute; None for the source's default.
        data_root (str): The dataset root (the official ``--dataset_dir``). Defaults to ``''``.
        data_prefix (dict, optional): Folders relative to ``data_root``: ``img_path`` and, for
            label-map sources, ``seg_map_path``. Keys not given keep the source's default.
        pipeline (Sequence[dict | Callable]): Transforms. Defaults to ``()``.
        test_mode (bool): Passed to :class:`mmengine.dataset.BaseDataset`. Defaults to False.
        lazy_init (bool): Defer loading until first use. Defaults to False.
        serialize_data (bool): Keep the data list as one pickled buffer. Defaults to True.
        skip_invalid_targets (bool): COCO-format part sources: drop an annotation whose target
            is invalid (see :class:`COCOPartSemSegDataset`) and log how many and which, instead
            of raising. Label-map sources have no polygon or RLE target; their label values are
            checked when a label map is read. Defaults to False.
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments (``metainfo``,
            ``indices``, ``max_refetch``).
    """

    METAINFO: dict = dict(dataset_name='semantic segmentation')
    DEFAULT_ANN_FILE: str = ''
    DEFAULT_DATA_PREFIX: dict = dict(img_path='')

    def __init__(self,
                 ann_file: Optional[str] = None,
                 data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 skip_invalid_targets: bool = False,
                 **kwargs) -> None:
        self.skip_invalid_targets = skip_invalid_targets
        prefix = dict(self.DEFAULT_DATA_PREFIX)
        prefix.update(data_prefix or {})
        # Keys that get_data_info adds to every item without serialising them per item.
        self._shared_info: Dict[str, Any] = {}
        super().__init__(ann_file=self.DEFAULT_ANN_FILE if ann_file is None else ann_file,
                         data_root=data_root, data_prefix=prefix,
                         pipeline=build_pipeline(pipeline),
                         test_mode=test_mode, lazy_init=lazy_init, serialize_data=serialize_data,
                         **kwargs)

    @property
    def dataset_name(self) -> str:
        """str: The source's name, as errors and logs give it."""
        return self._metainfo['dataset_name']

    def get_data_info(self, idx: int) -> dict:
        """Return the ``idx``-th data info with the source-wide keys (class table, name) added.

        Args:
            idx (int): Index of the item.

        Returns:
            dict: The data info.
        """
        info = super().get_data_info(idx)
        info.update(self._shared_info)
        return info

    def _missing(self, what: str, path: str, prepare: str) -> FileNotFoundError:
        return missing_file_error(type(self).__name__, what, path, prepare, self.data_root)

    def _record(self, record: str) -> str:
        return f'{self.dataset_name} {record}'

    def _read_json(self, path: str, what: str, prepare: str) -> Any:
        return parse_json(read_bytes(path, type(self).__name__, what, prepare, self.data_root),
                          path)


class LabelMapSemSegDataset(SemSegQADataset):
    """Base of the sources whose annotations are PNG label maps, one class value per pixel.

    Images and label maps pair by file stem (``<stem>.jpg`` and ``<stem>.png``); the folder named
    by ``LISTED`` is listed (as the official loader does) and every listed file must have its
    partner. A subclass gives the class table through :meth:`load_classes`.

    Each data info holds ``img_path``, ``seg_map_path``, ``img_id`` (the stem), ``record_index``
    (position in the sorted listing) and ``ann_file`` (the label map, so that pipeline errors
    name it); fetching adds ``dataset_name``, ``label_names`` (raw label value -> class name) and
    ``ignore_values`` (raw values that are no class).
    """

    # Which of data_prefix's folders is listed; the other one must hold the partner files.
    LISTED: str = 'seg_map_path'
    IMG_SUFFIX: str = '.jpg'
    SEG_SUFFIX: str = '.png'

    def load_classes(self) -> Tuple[Dict[int, str], Tuple[int, ...]]:
        """Read the source's class table.

        Returns:
            tuple: ``label_names`` (dict, raw label value -> class name) and ``ignore_values``
            (raw values that belong to no class).
        """
        raise NotImplementedError(f'{type(self).__name__} must implement load_classes()')

    def load_data_list(self) -> List[dict]:
        """Read the class table and pair every image with its label map.

        Returns:
            list[dict]: One data info per image (see the class docstring).

        Raises:
            FileNotFoundError: A folder is missing or empty, or a listed file has no partner.
            DatasetFormatError: The class table is malformed.
        """
        label_names, ignore_values = self.load_classes()
        self._shared_info = dict(dataset_name=self.dataset_name, label_names=label_names,
                                 ignore_values=tuple(ignore_values))
        self._metainfo['classes'] = tuple(label_names[v] for v in sorted(label_names))

        suffixes = dict(img_path=self.IMG_SUFFIX, seg_map_path=self.SEG_SUFFIX)
        kinds = dict(img_path='image', seg_map_path='label map')
        prepare = self.DEFAULT_DATA_PREFIX
        names = {}
        for key in ('img_path', 'seg_map_path'):
            folder = self.data_prefix[key]
            if not isdir(folder):
                raise self._missing(f'{kinds[key]} folder', folder, prepare[key])
            names[key] = set(list_dir_or_file(folder, list_dir=False, suffix=suffixes[key]))
        listed = self.LISTED
        partner = 'img_path' if listed == 'seg_map_path' else 'seg_map_path'
        if not names[listed]:
            raise DatasetFormatError(
                self.data_prefix[listed], self._record('folder'), f'*{suffixes[listed]}',
                f'the {kinds[listed]} folder holds no "*{suffixes[listed]}" file; prepare '
                f'{prepare[listed]!r} under data_root={self.data_root!r}')

        data_list = []
        for index, name in enumerate(sorted(names[listed])):
            stem = name[:-len(suffixes[listed])]
            paths = {listed: osp.join(self.data_prefix[listed], name),
                     partner: osp.join(self.data_prefix[partner], stem + suffixes[partner])}
            if stem + suffixes[partner] not in names[partner]:
                raise self._missing(
                    f'{paths[listed]}, {self._record(describe_record(index, stem))}: field '
                    f'{partner!r}: the {kinds[listed]}\'s {kinds[partner]}', paths[partner],
                    prepare[partner])
            data_list.append(dict(img_path=paths['img_path'], seg_map_path=paths['seg_map_path'],
                                  img_id=stem, record_index=index,
                                  ann_file=paths['seg_map_path']))
        return data_list


def _class_file(class_file: Optional[str], data_root: str, shipped: str) -> str:
    if class_file is None:
        return osp.join(METAINFO_DIR, shipped)
    return class_file if osp.isabs(class_file) else osp.join(data_root, class_file)


@DATASETS.register_module()
class ADE20KSemSegDataset(LabelMapSemSegDataset):
    """ADE20K (SceneParsing, 150 classes) as segmentation questions.

    Layout under ``data_root``: ``ade20k/images/training/<stem>.jpg`` (listed) and
    ``ade20k/annotations/training/<stem>.png``. Label value ``v`` in ``1..150`` is class
    ``v - 1`` of the class list; ``0`` (unlabelled) and ``255`` are ignored, as the official
    ``label[label == 0] = 255; label -= 1`` does. Any other value is an error.

    Args:
        class_file (str, optional): A json list of the 150 class names, absolute or relative to
            ``data_root``. Defaults to the official list shipped in ``metainfo/``.
        **kwargs: :class:`SemSegQADataset` arguments.
    """

    METAINFO = dict(dataset_name='ADE20K')
    DEFAULT_DATA_PREFIX = dict(img_path='ade20k/images/training',
                               seg_map_path='ade20k/annotations/training')
    LISTED = 'img_path'

    def __init__(self, class_file: Optional[str] = None, **kwargs) -> None:
        self.class_file = _class_file(class_file, kwargs.get('data_root', ''),
                                      'ade20k_classes.json')
        super().__init__(**kwargs)

    def load_classes(self) -> Tuple[Dict[int, str], Tuple[int, ...]]:
        """Read the json class list: name ``i`` is label value ``i + 1``.

        Returns:
            tuple: ``label_names`` and ``ignore_values`` (``(0, 255)``).
        """
        names = self._read_json(self.class_file, 'class list', self.class_file)
        if not isinstance(names, list) or not names or len(names) > 254:
            raise DatasetFormatError(self.class_file, self._record('class list'), '<top level>',
                                     'must be a json list of 1 to 254 class names')
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise DatasetFormatError(self.class_file, self._record('class list'), f'[{i}]',
                                         f'a class name must be a non-empty string, got {name!r}')
        return {i + 1: name for i, name in enumerate(names)}, (0, 255)


@DATASETS.register_module()
class COCOStuffSemSegDataset(LabelMapSemSegDataset):
    """COCO-Stuff 164k (``stuffthingmaps``) as segmentation questions.

    Layout under ``data_root``: ``cocostuff/train2017/<stem>.png`` (listed) and
    ``coco/train2017/<stem>.jpg``. The class list gives ``id: name`` lines; label value ``v`` is
    class ``id = v + 1`` and ``255`` is ``0: unlabeled``. As in the official loader, the classes
    whose name holds a ``'-'`` (``wall-brick``, ``floor-other``, ...) are ignored, like 255: they
    are asked about nowhere and are in no target's mask. Any other value is an error.

    Args:
        class_file (str, optional): The ``id: name`` class list, absolute or relative to
            ``data_root``. Defaults to the official list shipped in ``metainfo/``.
        **kwargs: :class:`SemSegQADataset` arguments.
    """

    METAINFO = dict(dataset_name='COCO-Stuff')
    DEFAULT_DATA_PREFIX = dict(img_path='coco/train2017', seg_map_path='cocostuff/train2017')
    LISTED = 'seg_map_path'

    def __init__(self, class_file: Optional[str] = None, **kwargs) -> None:
        self.class_file = _class_file(class_file, kwargs.get('data_root', ''),
                                      'cocostuff_classes.txt')
        super().__init__(**kwargs)

    def load_classes(self) -> Tuple[Dict[int, str], Tuple[int, ...]]:
        """Read the ``id: name`` class list.

        Returns:
            tuple: ``label_names`` (value ``id - 1`` -> name, names without ``'-'``) and
            ``ignore_values`` (255 and the values of the ``'-'`` classes).
        """
        text = read_bytes(self.class_file, type(self).__name__, 'class list', self.class_file,
                          self.data_root).decode('utf-8')
        label_names, ignore_values = {}, [255]
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            class_id, sep, name = line.strip().partition(': ')
            if not sep or not class_id.isdigit() or not name:
                raise DatasetFormatError(self.class_file, self._record(f'line {lineno}'),
                                         '<line>', f'expected "<id>: <name>", got {line!r}')
            value = int(class_id) - 1
            if value < 0:  # '0: unlabeled' is the label value 255
                continue
            if value >= 255 or value in label_names or value in ignore_values:
                raise DatasetFormatError(self.class_file, self._record(f'line {lineno}'), 'id',
                                         f'class id {class_id} is repeated or above 255')
            if '-' in name:
                ignore_values.append(value)
            else:
                label_names[value] = name
        if not label_names:
            raise DatasetFormatError(self.class_file, self._record('class list'), '<lines>',
                                     'no class')
        return label_names, tuple(ignore_values)


@DATASETS.register_module()
class MapillarySemSegDataset(LabelMapSemSegDataset):
    """Mapillary Vistas v2.0 as segmentation questions.

    Layout under ``data_root``: ``mapillary/config_v2.0.json``,
    ``mapillary/training/v2.0/labels/<stem>.png`` (listed) and
    ``mapillary/training/images/<stem>.jpg``. Label value ``v`` is ``labels[v]`` of the config,
    named by its ``readable`` name in lower case. Every label is a class, ``Unlabeled`` included,
    as in the official loader; any other value is an error.

    Args:
        ann_file (str, optional): The config json. Defaults to ``'mapillary/config_v2.0.json'``.
        **kwargs: :class:`SemSegQADataset` arguments.
    """

    METAINFO = dict(dataset_name='Mapillary Vistas')
    DEFAULT_ANN_FILE = 'mapillary/config_v2.0.json'
    DEFAULT_DATA_PREFIX = dict(img_path='mapillary/training/images',
                               seg_map_path='mapillary/training/v2.0/labels')
    LISTED = 'seg_map_path'

    def load_classes(self) -> Tuple[Dict[int, str], Tuple[int, ...]]:
        """Read the ``labels`` of the config json.

        Returns:
            tuple: ``label_names`` (index -> lower-case ``readable``) and no ``ignore_values``.
        """
        config = self._read_json(self.ann_file, 'config file', self.DEFAULT_ANN_FILE)
        labels = config.get('labels') if isinstance(config, dict) else None
        if not isinstance(labels, list) or not labels:
            raise DatasetFormatError(self.ann_file, self._record('config'), 'labels',
                                     'missing or not a non-empty list')
        label_names = {}
        for i, label in enumerate(labels):
            readable = label.get('readable') if isinstance(label, dict) else None
            if not isinstance(readable, str) or not readable:
                raise DatasetFormatError(self.ann_file, self._record(f'labels[{i}]'), 'readable',
                                         f'must be a non-empty string, got {readable!r}')
            label_names[i] = readable.lower()
        return label_names, ()


def part_category_name(name: str) -> Dict[str, str]:
    """Turn a PACO/PASCAL-Part category name into the fields that name a target.

    ``'object:part'`` is a part, ``'object'`` a whole object; LVIS's sense suffix (``'_(...)'``,
    as in ``'bowl_(dish)'``) is dropped from each, as the official loader does. Underscores stay.

    Args:
        name (str): The category's ``name``.

    Returns:
        dict: ``dict(object_name=..., part_name=...)`` or ``dict(category_name=...)``.

    Raises:
        ValueError: The name has more than one ``':'`` or an empty part.
    """
    pieces = [piece.split('_(')[0] for piece in name.strip().split(':')]
    if len(pieces) > 2 or not all(pieces):
        raise ValueError(f'expected "object" or "object:part", got {name!r}')
    if len(pieces) == 2:
        return dict(object_name=pieces[0], part_name=pieces[1])
    return dict(category_name=pieces[0])


class COCOPartSemSegDataset(SemSegQADataset):
    """Base of the COCO-format part segmentation sources (PACO-LVIS, PASCAL-Part).

    The annotation json has ``images``, ``annotations`` and ``categories``; a category named
    ``'object:part'`` is a part (see :func:`part_category_name`). Every annotation is one target
    candidate with its own instance mask, as in the official loader (two annotations of one
    category are two targets). Everything is checked at load time: the json, each image's
    ``file_name``/``height``/``width``, each annotation's ``image_id`` and ``category_id`` (an
    unknown id is an error) and ``segmentation`` (polygons or RLE of the image's size; a target
    that gives no usable mask, see :func:`~pixellm.datasets.muse_dataset.check_target`, raises
    :class:`~pixellm.datasets.muse_dataset.InvalidTargetError` unless
    ``skip_invalid_targets=True`` drops it; degenerate polygons beside good ones are dropped,
    and an annotation of degenerate polygons only is invalid). An empty
    ``annotations`` list is an error; images without any annotation are skipped and counted in
    the log (the official loader draws another image when it meets one).

    Each data info holds ``img_path``, ``img_id``, ``record_index`` (position in ``images``),
    ``ann_file``, ``height``, ``width`` and ``instances`` (``id``, ``category_id``,
    ``segmentation`` and either ``category_name`` or ``object_name``/``part_name``); fetching adds
    ``dataset_name``.
    """

    def load_data_list(self) -> List[dict]:
        """Read and check the annotation json and group its annotations by image.

        Returns:
            list[dict]: One data info per image with at least one annotation.

        Raises:
            FileNotFoundError: The annotation file or the image folder is missing.
            DatasetFormatError: On the first malformed category, image or annotation.
        """
        self._shared_info = dict(dataset_name=self.dataset_name)
        if not isdir(self.data_prefix['img_path']):
            raise self._missing('image folder', self.data_prefix['img_path'],
                                self.DEFAULT_DATA_PREFIX['img_path'])
        coco = self._read_json(self.ann_file, 'annotation file', self.DEFAULT_ANN_FILE)
        if not isinstance(coco, dict):
            raise DatasetFormatError(self.ann_file, self._record('file'), '<top level>',
                                     'a COCO-format file is a json object')
        for key in ('images', 'annotations', 'categories'):
            if not isinstance(coco.get(key), list):
                raise DatasetFormatError(self.ann_file, self._record('file'), key,
                                         'missing or not a list')
        if not coco['annotations']:
            raise DatasetFormatError(self.ann_file, self._record('file'), 'annotations',
                                     'empty: there is no target to ask about')
        categories = self._parse_categories(coco['categories'])
        images = self._parse_images(coco['images'])
        instances: Dict[Any, List[dict]] = {image_id: [] for image_id in images}
        skipped = SkippedTargets(self.dataset_name, self.ann_file, self.skip_invalid_targets)
        for k, ann in enumerate(coco['annotations']):
            try:
                image_id = self._check_annotation(ann, k, images, categories)
            except InvalidTargetError as err:
                skipped.drop(err)
                continue
            instances[image_id].append(
                dict({key: ann[key] for key in _KEPT_INSTANCE_KEYS if key in ann},
                     segmentation=clean_polygons(ann['segmentation']),
                     **categories[ann['category_id']]))
        skipped.log()

        data_list, skipped = [], 0
        for image_id, (index, image) in images.items():
            if not instances[image_id]:
                skipped += 1
                continue
            data_list.append(dict(img_path=osp.join(self.data_prefix['img_path'],
                                                    image['file_name']),
                                  img_id=image_id, record_index=index, ann_file=self.ann_file,
                                  height=image['height'], width=image['width'],
                                  instances=instances[image_id]))
        self._metainfo['classes'] = tuple(
            names.get('category_name') or f'{names["object_name"]}:{names["part_name"]}'
            for names in categories.values())
        if skipped:
            print_log(f'{self.dataset_name}: {skipped} of {len(images)} images in '
                      f'{self.ann_file} have no annotation and are skipped',
                      logger='current', level=logging.WARNING)
        return data_list

    def _parse_categories(self, categories: list) -> Dict[int, Dict[str, str]]:
        parsed = {}
        for k, cat in enumerate(categories):
            record = self._record(f'categories[{k}]')
            if not isinstance(cat, dict) or not isinstance(cat.get('id'), int):
                raise DatasetFormatError(self.ann_file, record, 'id', 'missing or not an integer')
            if cat['id'] in parsed:
                raise DatasetFormatError(self.ann_file, record, 'id',
                                         f'category id {cat["id"]} is repeated')
            if not isinstance(cat.get('name'), str):
                raise DatasetFormatError(self.ann_file, record, 'name', 'missing or not a string')
            try:
                parsed[cat['id']] = part_category_name(cat['name'])
            except ValueError as err:
                raise DatasetFormatError(self.ann_file, record, 'name', str(err)) from err
        return parsed

    def _parse_images(self, images: list) -> Dict[Any, Tuple[int, dict]]:
        parsed = {}
        for index, image in enumerate(images):
            image_id = image.get('id') if isinstance(image, dict) else None
            record = self._record(f'images[{index}] (id={image_id})')
            if not isinstance(image_id, (int, str)) or isinstance(image_id, bool) \
                    or image_id in parsed:
                raise DatasetFormatError(self.ann_file, record, 'id',
                                         'missing, not an integer or string, or repeated')
            if not isinstance(image.get('file_name'), str) or not image['file_name']:
                raise DatasetFormatError(self.ann_file, record, 'file_name',
                                         'missing or not a non-empty string')
            for key in ('height', 'width'):
                if not is_int(image.get(key)) or image[key] <= 0:
                    raise DatasetFormatError(self.ann_file, record, key,
                                             f'must be a positive integer, got '
                                             f'{image.get(key)!r}')
            parsed[image_id] = (index, image)
        return parsed

    def _check_annotation(self, ann: Any, k: int, images: dict, categories: dict) -> Any:
        ann_id = ann.get('id') if isinstance(ann, dict) else None
        record = self._record(f'annotations[{k}] (id={ann_id})')
        if not isinstance(ann, dict):
            raise DatasetFormatError(self.ann_file, record, '<record>',
                                     f'must be a json object, got {type(ann).__name__}')
        if not has_key(images, ann.get('image_id')):
            raise DatasetFormatError(self.ann_file, record, 'image_id',
                                     f'unknown image id {ann.get("image_id")!r}')
        if not has_key(categories, ann.get('category_id')):
            raise DatasetFormatError(self.ann_file, record, 'category_id',
                                     f'unknown class id {ann.get("category_id")!r}: not in '
                                     f'"categories"')
        if 'segmentation' not in ann:
            raise DatasetFormatError(self.ann_file, record, 'segmentation', 'missing')
        image = images[ann['image_id']][1]
        segm = ann['segmentation']
        # Degenerate polygons (fewer than 3 points) beside good ones are dropped, as the refer
        # loaders do; an annotation with nothing else is an invalid target.
        cleaned = clean_polygons(segm)
        if isinstance(segm, list) and segm and not cleaned:
            problem = 'only degenerate polygons (fewer than 3 points), an empty mask'
        else:
            problem = check_target(cleaned, image['height'], image['width'])
        if problem:
            raise InvalidTargetError(self.ann_file, record, 'segmentation', problem)
        return ann['image_id']


@DATASETS.register_module()
class PACOLVISSemSegDataset(COCOPartSemSegDataset):
    """PACO-LVIS (objects and their parts on COCO 2017 images) as segmentation questions.

    Layout under ``data_root``: ``vlpart/paco/annotations/paco_lvis_v1_train.json`` and the COCO
    images under ``coco/`` (the json's ``file_name`` is ``train2017/<name>.jpg`` or
    ``val2017/<name>.jpg``). See :class:`COCOPartSemSegDataset` for the format and the checks.

    Args:
        **kwargs: :class:`SemSegQADataset` arguments; ``ann_file`` defaults to the train json.
    """

    METAINFO = dict(dataset_name='PACO-LVIS')
    DEFAULT_ANN_FILE = 'vlpart/paco/annotations/paco_lvis_v1_train.json'
    DEFAULT_DATA_PREFIX = dict(img_path='coco')


@DATASETS.register_module()
class PascalPartSemSegDataset(COCOPartSemSegDataset):
    """PASCAL-Part (object parts on PASCAL VOC 2010 images) as segmentation questions.

    Layout under ``data_root``: ``vlpart/pascal_part/train.json`` and the images under
    ``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/``. See :class:`COCOPartSemSegDataset` for
    the format and the checks.

    Args:
        **kwargs: :class:`SemSegQADataset` arguments; ``ann_file`` defaults to ``train.json``.
    """

    METAINFO = dict(dataset_name='PASCAL-Part')
    DEFAULT_ANN_FILE = 'vlpart/pascal_part/train.json'
    DEFAULT_DATA_PREFIX = dict(img_path='vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages')
