"""refCOCO, refCOCO+, refCOCOg and refCLEF referring segmentation, read from the REFER files.

The on-disk layout is the official one (``refer_seg/<dataset>/refs(<splitBy>).p`` with the
dataset's ``instances.json``; images under ``refer_seg/images/mscoco/images/train2014`` or
``refer_seg/images/saiapr_tc-12`` for refCLEF). Data infos have the shape
:class:`~pixellm.datasets.MUSEDataset` gives, so the MUSE pipeline runs on them; the referring
expressions are worded by ``SampleReferPhrases`` and ``BuildReferConversation``.
"""
import logging
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from mmengine.dataset import BaseDataset
from mmengine.fileio import join_path
from mmengine.logging import print_log
from mmengine.utils import is_abs

from pixellm.datasets.dataset_utils import (build_pipeline, clean_polygons, has_key, is_int,
                                            load_data_pickle, merge_segmentations, read_bytes,
                                            read_json)
from pixellm.datasets.muse_dataset import (DatasetFormatError, InvalidTargetError, SkippedTargets,
                                           check_target)
from pixellm.registry import DATASETS

# The official ``splitBy`` per dataset (``train_ds.py``: umd for refcocog, unc otherwise).
DEFAULT_SPLIT_BY = {'refcoco': 'unc', 'refcoco+': 'unc', 'refcocog': 'umd', 'refclef': 'unc'}
COCO_TRAIN2014 = 'refer_seg/images/mscoco/images/train2014'
SAIAPR = 'refer_seg/images/saiapr_tc-12'
# gRefCOCO's ``ann_id`` of an expression that matches no object.
NO_TARGET_ANN_ID = -1


def _first_sentence(ref: dict) -> str:
    """The first referring expression of a ref, to name it in errors ('' when it has none)."""
    sentences = ref.get('sentences')
    first = sentences[0] if isinstance(sentences, list) and sentences else None
    text = first.get('sent') if isinstance(first, dict) else None
    return text if isinstance(text, str) else ''


@DATASETS.register_module()
class ReferSegDataset(BaseDataset):
    """refCOCO / refCOCO+ / refCOCOg / refCLEF referring segmentation from ``refs(<splitBy>).p``.

    Reads the REFER pickle (a list of refs: ``ref_id``, ``ann_id``, ``image_id``,
    ``category_id``, ``split`` and ``sentences`` with ``sent``) and the dataset's COCO-style
    ``instances.json`` (``images``, ``annotations``, ``categories``). A ref belongs to ``split``
    as in REFER's ``getRefIds``: ``'train'``/``'val'`` exactly, ``'testA'``/``'testB'``/
    ``'testC'`` when the letter is in the ref's split (``testAB`` counts for both), ``'test'``
    for every test split.

    Training (``test_mode=False``) gives one item per image with every sentence of the image's
    refs as a question, each with its ref's object as the one target. ``SampleReferPhrases``
    then draws the phrases of one conversation as the official loader does
    (``num_classes_per_question``, ``num_classes_per_sample``); ``SampleQuestion`` works too and
    gives one phrase per conversation. Evaluation (``test_mode=True``) gives one item per
    sentence (``question_index``), as refCOCO val/testA/testB are scored.

    Sentences are kept as written (stripped); the conversation transform lowercases them as the
    official templates do. Empty sentences (the official validation code allows for them) name
    nothing and are left out, with a warning.

    Targets: an annotation's ``segmentation`` is polygons, an RLE, or (refCLEF's form, which
    REFER's ``getMask`` and the official loader decode) a list of RLEs, whose union is the
    target. Polygons of fewer than 3 points beside good ones are dropped (see
    :func:`~pixellm.datasets.dataset_utils.clean_polygons`). A target that gives no usable mask
    (an empty ``segmentation``, only degenerate polygons, polygons outside the image, an empty
    RLE or invalid RLE counts; see :func:`~pixellm.datasets.muse_dataset.check_target`) raises
    :class:`~pixellm.datasets.muse_dataset.InvalidTargetError` naming ``instances.json``, the
    annotation, the ref and its expression, and the field; ``skip_invalid_targets=True`` leaves
    out the refs of such targets instead and logs them.

    Data info keys: ``img_path``, ``img_path_field`` (``'file_name'``), ``img_id``,
    ``record_index`` (the image's position in ``instances.json``'s ``images``), ``ann_file``
    (the ``instances.json`` path, which holds the image and the masks), ``refs_file``,
    ``height``, ``width``, ``questions`` (sentences), ``answers`` (per sentence a list of
    instance dicts with ``id``, ``category_id``, ``category_name``, ``segmentation``),
    ``text_answers`` (all None: answers are composed), ``ref_ids``, ``sent_ids`` and
    ``no_target`` (per sentence; always False here), ``is_sentence`` (False: short-question
    templates), and ``question_index`` in test mode.

    Errors: a missing refs file or ``instances.json`` raises ``FileNotFoundError`` naming the
    path to prepare; a refs pickle that names any class or function raises
    :class:`~pixellm.datasets.dataset_utils.UnsafePickleError` without running anything (see
    :func:`~pixellm.datasets.dataset_utils.load_data_pickle`); a malformed file, a ref without
    sentences, an unknown ``image_id``, ``ann_id`` or ``category_id``, an annotation of another
    image, an empty ``annotations`` list or a bad segmentation raise :class:`DatasetFormatError` naming the file, the record
    and the field. A missing image is reported by ``LoadImageFromFile`` when it is read.

    Args:
        dataset_name (str): ``'refcoco'``, ``'refcoco+'``, ``'refcocog'`` or ``'refclef'``.
            Defaults to ``'refcoco'``.
        split (str): ``'train'``, ``'val'``, ``'test'``, ``'testA'``, ``'testB'`` or
            ``'testC'``. Defaults to ``'train'``.
        split_by (str, optional): REFER ``splitBy`` (``'unc'``, ``'umd'``, ``'google'``,
            ...). Defaults to the official choice: ``'umd'`` for refcocog, ``'unc'`` otherwise.
        data_root (str): Root of the official ``dataset`` folder. Defaults to ``''``.
        ann_file (str): The refs file, relative to ``data_root`` unless absolute. Defaults to
            ``refer_seg/<dataset_name>/refs(<split_by>).p``. A ``.json`` file is read as json.
        instances_file (str): The COCO instances file, relative to ``data_root`` unless
            absolute. Defaults to ``instances.json`` beside ``ann_file``.
        data_prefix (dict, optional): ``img_path``: the image folder. Defaults to
            ``refer_seg/images/saiapr_tc-12`` for refclef and
            ``refer_seg/images/mscoco/images/train2014`` otherwise.
        pipeline (Sequence[dict | Callable]): Transforms. Defaults to ``()``.
        test_mode (bool): One item per sentence instead of per image. Defaults to False.
        lazy_init (bool): Defer reading the files until first use. Defaults to False.
        serialize_data (bool): Keep the data list as one pickled buffer. Defaults to True.
        skip_invalid_targets (bool): Leave out a ref whose target is invalid and log how many
            and which, instead of raising. Defaults to False.
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments.
    """

    METAINFO: dict = dict(dataset_name='refcoco')
    # Which files and datasets the class reads; GRefCOCODataset changes these.
    KNOWN_DATASETS: Tuple[str, ...] = tuple(DEFAULT_SPLIT_BY)
    REFS_FILE_FORMAT = 'refs({split_by}).p'

    def __init__(self,
                 dataset_name: str = 'refcoco',
                 split: str = 'train',
                 split_by: Optional[str] = None,
                 data_root: str = '',
                 ann_file: str = '',
                 instances_file: str = '',
                 data_prefix: Optional[dict] = None,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 skip_invalid_targets: bool = False,
                 **kwargs) -> None:
        self.skip_invalid_targets = skip_invalid_targets
        if dataset_name not in self.KNOWN_DATASETS and not (ann_file and data_prefix):
            raise ValueError(
                f'{type(self).__name__}: unknown dataset_name {dataset_name!r}; known: '
                f'{list(self.KNOWN_DATASETS)} (another REFER-format dataset needs ann_file and '
                'data_prefix=dict(img_path=...))')
        self.dataset_name = dataset_name
        self.split = split
        self.split_by = split_by or DEFAULT_SPLIT_BY.get(dataset_name, 'unc')
        if not ann_file:
            ann_file = osp.join('refer_seg', dataset_name,
                                self.REFS_FILE_FORMAT.format(split_by=self.split_by))
        # Kept relative for error messages ("prepare <this> under data_root").
        self._ann_file_rel = ann_file
        self._instances_file_rel = instances_file or osp.join(osp.dirname(ann_file),
                                                              'instances.json')
        self.instances_file = self._instances_file_rel
        prefix = dict(img_path=SAIAPR if dataset_name == 'refclef' else COCO_TRAIN2014)
        prefix.update(data_prefix or {})
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=prefix,
                         pipeline=build_pipeline(pipeline), test_mode=test_mode,
                         lazy_init=lazy_init, serialize_data=serialize_data, **kwargs)
        # Set here rather than passed as metainfo, which mmengine would try to open as a file.
        if 'dataset_name' not in (kwargs.get('metainfo') or {}):
            self._metainfo['dataset_name'] = dataset_name

    def _join_prefix(self) -> None:
        super()._join_prefix()
        if self.instances_file and not is_abs(self.instances_file) and self.data_root:
            self.instances_file = join_path(self.data_root, self.instances_file)

    # ------------------------------------------------------------------ reading the files

    def _read_refs(self) -> list:
        name, what = type(self).__name__, (f'refs file of {self.dataset_name} '
                                           f'(splitBy {self.split_by})')
        if self.ann_file.endswith('.json'):
            refs = read_json(self.ann_file, list, 'a list of refs', name, what,
                             self._ann_file_rel, self.data_root)
        else:
            data = read_bytes(self.ann_file, name, what, self._ann_file_rel, self.data_root)
            refs = load_data_pickle(data, self.ann_file)
            if not isinstance(refs, list):
                raise DatasetFormatError(self.ann_file, '', '<top level>',
                                         f'must be a list of refs, got {type(refs).__name__}')
        if not refs:
            raise DatasetFormatError(self.ann_file, '', '<top level>', 'empty: no refs')
        return refs

    def _read_instances(self) -> Dict[str, dict]:
        """Read ``instances.json`` into ``images``/``anns`` (id -> (index, record)) and ``cats``."""
        instances = read_json(self.instances_file, dict, 'a COCO instances json object',
                              type(self).__name__, f'instances file of {self.dataset_name}',
                              self._instances_file_rel, self.data_root)
        tables = {}
        for key in ('images', 'annotations', 'categories'):
            if key not in instances:
                raise DatasetFormatError(self.instances_file, '', key, 'missing')
            if not isinstance(instances[key], list):
                raise DatasetFormatError(self.instances_file, '', key,
                                         f'must be a list, got {type(instances[key]).__name__}')
            if not instances[key]:
                raise DatasetFormatError(self.instances_file, '', key,
                                         'empty list: the dataset has no ' + key)
            table = {}
            for index, item in enumerate(instances[key]):
                if not isinstance(item, dict) or not isinstance(item.get('id'), (int, str)):
                    raise DatasetFormatError(self.instances_file, f'{key}[{index}]', 'id',
                                             'every entry must be an object with an integer or '
                                             'string "id"')
                if key == 'categories' and not isinstance(item.get('name'), str):
                    raise DatasetFormatError(self.instances_file,
                                             f'{key}[{index}] (id={item["id"]})', 'name',
                                             f'must be a string, got {item.get("name")!r}')
                table[item['id']] = (index, item)
            tables[key] = table
        return dict(images=tables['images'], anns=tables['annotations'],
                    cats={cid: cat['name'] for cid, (_, cat) in tables['categories'].items()})

    # ------------------------------------------------------------------ split and refs

    def _in_split(self, ref_split: str) -> bool:
        """REFER's ``getRefIds(split=...)`` rule."""
        split = self.split
        if split in ('testA', 'testB', 'testC'):
            return ref_split.startswith('test') and split[-1] in ref_split[4:]
        if split == 'test':
            return 'test' in ref_split
        return ref_split == split

    def _ann_ids(self, ref: dict, fail: Callable[[str, str], DatasetFormatError]) -> List[int]:
        """The ref's target annotation ids (one for REFER)."""
        if not is_int(ref['ann_id']):
            raise fail('ann_id', f'must be an integer annotation id, got {ref["ann_id"]!r}')
        return [ref['ann_id']]

    def _check_ref_category(self, ref: dict, cats: dict,
                            fail: Callable[[str, str], DatasetFormatError]) -> None:
        if not has_key(cats, ref.get('category_id')):
            raise fail('category_id', f'unknown category id {ref.get("category_id")!r}: not in '
                       f'the categories of {self.instances_file}')

    def _targets(self, ann_ids: List[int], image: dict, tables: dict, cache: dict,
                 fail: Callable[[str, str], DatasetFormatError]) -> Optional[List[dict]]:
        """One instance dict per annotation id (see :meth:`_instance`); None leaves the
        expression out (a gRefCOCO expression of crowd regions only)."""
        return [self._instance(ann_id, image, tables, cache, fail) for ann_id in ann_ids]

    def _instance(self, ann_id: int, image: dict, tables: dict, cache: dict,
                  fail: Callable[[str, str], DatasetFormatError]) -> dict:
        """Validate one annotation and reduce it to the instance dict the pipeline reads."""
        if not has_key(tables['anns'], ann_id):
            raise fail('ann_id', f'unknown annotation id {ann_id!r}: not in the annotations of '
                       f'{self.instances_file}')
        index, ann = tables['anns'][ann_id]
        where = f'annotations[{index}] (id={ann_id})'
        if ann.get('image_id') != image['id']:
            raise DatasetFormatError(self.instances_file, where, 'image_id',
                                     f'the annotation is of image {ann.get("image_id")!r} but '
                                     f'the ref that names it is of image {image["id"]!r}')
        if ann_id in cache:
            if isinstance(cache[ann_id], InvalidTargetError):
                raise cache[ann_id]
            return cache[ann_id]
        if not has_key(tables['cats'], ann.get('category_id')):
            raise DatasetFormatError(self.instances_file, where, 'category_id',
                                     f'unknown category id {ann.get("category_id")!r}')
        if 'segmentation' not in ann:
            raise DatasetFormatError(self.instances_file, where, 'segmentation', 'missing')
        height, width = image['height'], image['width']
        field, segm, problem = 'segmentation', ann['segmentation'], None
        if isinstance(segm, list) and segm and all(isinstance(part, dict) for part in segm):
            # refCLEF's form: a list of RLEs, decoded and summed by REFER's getMask (a union).
            for k, part in enumerate(segm):
                problem = check_target(part, height, width)
                if problem:
                    field = f'segmentation[{k}]'
                    break
            else:
                segm = merge_segmentations(segm, height, width)
        else:
            segm = clean_polygons(ann['segmentation'])
            if isinstance(segm, list) and not segm:
                problem = ('empty: no polygon' if not ann['segmentation'] else
                           'only degenerate polygons (fewer than 3 points)') + ', an empty mask'
            else:
                problem = check_target(segm, height, width)
        if problem:
            cache[ann_id] = InvalidTargetError(self.instances_file, where, field, problem)
            raise cache[ann_id]
        inst = dict(id=ann_id, category_id=ann['category_id'],
                    category_name=tables['cats'][ann['category_id']], segmentation=segm)
        cache[ann_id] = inst
        return inst

    def _image(self, image_id: Any, tables: dict,
               fail: Callable[[str, str], DatasetFormatError]) -> Tuple[int, dict]:
        if not has_key(tables['images'], image_id):
            raise fail('image_id', f'unknown image id {image_id!r}: not in the images of '
                       f'{self.instances_file}')
        index, image = tables['images'][image_id]
        where = f'images[{index}] (id={image_id})'
        if not isinstance(image.get('file_name'), str) or not image['file_name']:
            raise DatasetFormatError(self.instances_file, where, 'file_name', 'missing')
        for key in ('height', 'width'):
            if not is_int(image.get(key)) or image[key] <= 0:
                raise DatasetFormatError(self.instances_file, where, key,
                                         f'must be a positive integer, got {image.get(key)!r}')
        return index, image

    def _sentences(self, ref: dict,
                   fail: Callable[[str, str], DatasetFormatError]) -> List[Tuple[str, Any]]:
        sentences = ref.get('sentences')
        if not isinstance(sentences, list):
            raise fail('sentences', 'missing or not a list')
        if not sentences:
            raise fail('sentences', 'empty: a ref has at least one referring expression')
        out = []
        for s, sent in enumerate(sentences):
            text = sent.get('sent') if isinstance(sent, dict) else None
            if not isinstance(text, str):
                raise fail(f'sentences[{s}].sent', f'must be a string, got {text!r}')
            # The official validation code allows for empty expressions; they name nothing.
            if text.strip():
                out.append((text.strip(), sent.get('sent_id')))
        return out

    def load_data_list(self) -> List[dict]:
        """Read the refs and ``instances.json`` and build the data infos of ``split``.

        Returns:
            list[dict]: Per image (train) or per sentence (test); see the class docstring.

        Raises:
            FileNotFoundError: A file to prepare is missing.
            DatasetFormatError: On the first malformed record, naming file, record and field.
        """
        refs = self._read_refs()
        tables = self._read_instances()
        per_image: Dict[Any, dict] = {}
        cache: Dict[int, dict] = {}
        splits = set()
        num_empty = num_crowd_only = 0
        skipped = SkippedTargets(type(self).__name__, self.instances_file,
                                 self.skip_invalid_targets)
        for index, ref in enumerate(refs):
            ref_id = ref.get('ref_id') if isinstance(ref, dict) else None
            where = f'refs[{index}]' + ('' if ref_id is None else f' (ref_id={ref_id})')

            def fail(field: str, problem: str, where=where) -> DatasetFormatError:
                return DatasetFormatError(self.ann_file, where, field, problem)

            if not isinstance(ref, dict):
                raise fail('<ref>', f'a ref must be a dict, got {type(ref).__name__}')
            for key in ('split', 'image_id', 'ann_id'):
                if key not in ref:
                    raise fail(key, 'missing')
            if not isinstance(ref['split'], str):
                raise fail('split', f'must be a string, got {ref["split"]!r}')
            splits.add(ref['split'])
            if not self._in_split(ref['split']):
                continue
            image_index, image = self._image(ref['image_id'], tables, fail)
            self._check_ref_category(ref, tables['cats'], fail)
            ann_ids = self._ann_ids(ref, fail)
            sentences = self._sentences(ref, fail)
            try:
                targets = self._targets(ann_ids, image, tables, cache, fail)
            except InvalidTargetError as err:
                named = f'{err.record}, a target of {where} {_first_sentence(ref)!r}'
                skipped.drop(InvalidTargetError(err.file, named, err.field, err.problem))
                continue
            if targets is None:
                num_crowd_only += 1
                continue
            num_empty += len(ref['sentences']) - len(sentences)
            if not sentences:
                continue
            if image['id'] not in per_image:
                per_image[image['id']] = dict(
                    img_path=osp.join(self.data_prefix['img_path'], image['file_name']),
                    img_path_field='file_name', img_id=image['id'], record_index=image_index,
                    ann_file=self.instances_file, refs_file=self.ann_file,
                    height=image['height'], width=image['width'], questions=[], answers=[],
                    text_answers=[], ref_ids=[], sent_ids=[], no_target=[], is_sentence=False)
            info = per_image[image['id']]
            for text, sent_id in sentences:
                info['questions'].append(text)
                info['answers'].append(targets)
                info['text_answers'].append(None)
                info['ref_ids'].append(ref_id)
                info['sent_ids'].append(sent_id)
                # gRefCOCO's expressions that match nothing; never the case for REFER refs.
                info['no_target'].append(ann_ids == [NO_TARGET_ANN_ID])
        if num_empty:
            print_log(f'{type(self).__name__}: left out {num_empty} empty referring '
                      f'expression(s) of split {self.split!r} in {self.ann_file}',
                      logger='current', level=logging.WARNING)
        if num_crowd_only:
            print_log(f'{type(self).__name__}: left out {num_crowd_only} referring expression(s) '
                      f'of split {self.split!r} in {self.ann_file} whose every object is a crowd '
                      'region (iscrowd), which is no target', logger='current',
                      level=logging.WARNING)
        skipped.log()
        if not per_image:
            raise DatasetFormatError(self.ann_file, '', 'split',
                                     f'no ref of split {self.split!r}; the file has splits '
                                     f'{sorted(splits)}')
        data_list = []
        for info in per_image.values():
            if self.test_mode:
                # The official validation lowercases every referring sentence.
                lowered = [text.lower() for text in info['questions']]
                data_list.extend(dict(info, questions=lowered, question_index=q)
                                 for q in range(len(info['questions'])))
            else:
                data_list.append(info)
        return data_list

