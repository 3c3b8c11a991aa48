"""The MUSE multi-target reasoning-segmentation dataset, read from its released json files.

A MUSE file is a json list with one record per image: COCO image fields, ``questions``, per question
the target instances (``answers``) and usually ``text_answers`` with one ``{seg}`` per target.
Records are validated when the file is loaded, so a bad record fails before training starts, with
one error that names the file, the record and the field.
"""
import json
import logging
import os.path as osp
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from mmengine.dataset import BaseDataset
from mmengine.fileio import get_text
from mmengine.logging import print_log

from pixellm.registry import DATASETS, TRANSFORMS
from pixellm.utils.constants import SEG_PLACEHOLDER

# Where the official loader looks for images, relative to its dataset root: ``file_name`` records
# are COCO train2014 images, ``coco_url`` records COCO 2017 images of the split named in the url.
DEFAULT_DATA_PREFIX = dict(
    img_path='refer_seg/images/mscoco/images/train2014',
    train2017_img_path='refer_seg/images/mscoco/images/train2017',
    val2017_img_path='refer_seg/images/mscoco/images/val2017',
)

# Instance keys that the pipeline reads; the rest of a COCO annotation (area, bbox, iscrowd) is
# dropped so that the serialised data list stays small.
_KEPT_INSTANCE_KEYS = ('id', 'category_id', 'category_name', 'rephrased_name', 'segmentation')


class DatasetFormatError(ValueError):
    """A dataset file or record that does not follow its format.

    The message names the file, the record and the field; the same facts are kept as attributes so
    that tools can report them.

    Args:
        file (str): The annotation or image file at fault.
        record (str): Which record, e.g. ``'record 3 (id=139)'``; empty for file-level errors.
        field (str): The field at fault, e.g. ``'answers[1][0].segmentation'``.
        problem (str): What is wrong with it.
    """

    def __init__(self, file: str, record: str, field: str, problem: str) -> None:
        self.file = file
        self.record = record
        self.field = field
        self.problem = problem
        where = ', '.join(part for part in (file, record) if part)
        super().__init__(f'{where}: field {field!r}: {problem}')


class InvalidTargetError(DatasetFormatError):
    """A target (polygon or RLE) that gives no usable mask: empty, outside the image, degenerate
    or with unreadable RLE counts.

    Raised when a dataset is built (or, where only the image tells the size, when the mask is
    decoded). Adapters built with ``skip_invalid_targets=True`` drop such targets instead and log
    how many and which. Arguments as :class:`DatasetFormatError`.
    """


def describe_record(index: Optional[int], record_id: Any = None) -> str:
    """Return how errors name a record: its position in the file and its ``id`` when it has one.

    Args:
        index (int, optional): Position of the record in the json list.
        record_id (Any): The record's ``id`` field. Defaults to None.

    Returns:
        str: e.g. ``'record 3 (id=139)'``.
    """
    text = f'record {index}' if index is not None else 'record ?'
    return text if record_id is None else f'{text} (id={record_id})'


def record_context(results: dict) -> Dict[str, str]:
    """Return the ``file`` and ``record`` arguments of :class:`DatasetFormatError` for a data info.

    Transforms call this so that a failure deep in the pipeline still names the annotation file
    and the record the sample came from.

    Args:
        results (dict): A data info produced by :class:`MUSEDataset` (or a pipeline dict built from
            it). Reads ``ann_file``, ``record_index`` and ``img_id`` when present.

    Returns:
        dict: ``dict(file=..., record=...)``.
    """
    return dict(file=str(results.get('ann_file', '<unknown annotation file>')),
                record=describe_record(results.get('record_index'), results.get('img_id')))


def _instance_id(inst: dict) -> str:
    return f' (id={inst["id"]})' if 'id' in inst else ''


def _is_number(value: Any) -> bool:
    # bool is an int subclass but never a coordinate or a run length.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_segmentation(segm: Any, height: int, width: int) -> Optional[str]:
    """Check one instance's ``segmentation`` against the COCO conventions and the image size.

    Accepted: a non-empty list of polygons, each a flat list of at least 3 ``x, y`` pairs; or an
    RLE dict with ``size == [height, width]`` and ``counts`` either a compressed string or a list
    of run lengths summing to ``height * width``.

    Args:
        segm (Any): The ``segmentation`` value of an instance annotation.
        height (int): Image height from the record.
        width (int): Image width from the record.

    Returns:
        str or None: What is wrong, or None when the segmentation is valid.
    """
    if isinstance(segm, dict):
        if 'counts' not in segm or 'size' not in segm:
            return 'an RLE segmentation needs both "counts" and "size"'
        size = segm['size']
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(v, int) for v in size)):
            return f'RLE "size" must be [height, width], got {size!r}'
        if list(size) != [height, width]:
            return (f'mask size {list(size)} (RLE "size") differs from the image size '
                    f'[{height}, {width}] (record height/width)')
        counts = segm['counts']
        if isinstance(counts, str):
            if not counts:
                return 'RLE "counts" is an empty string'
            return None
        if isinstance(counts, list):
            if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
                return 'uncompressed RLE "counts" must be a list of non-negative integers'
            if sum(counts) != height * width:
                return (f'uncompressed RLE "counts" sum to {sum(counts)}, but the mask has '
                        f'{height} x {width} = {height * width} pixels')
            return None
        return f'RLE "counts" must be a string or a list of integers, got {type(counts).__name__}'
    if isinstance(segm, list):
        if not segm:
            return 'empty polygon list'
        for k, poly in enumerate(segm):
            # pycocotools reads a 4-number list as a box and a flat list as nothing sensible, so a
            # polygon must be a list of at least 3 points.
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return f'polygon {k} must be a flat list of numbers [x0, y0, x1, y1, ...]'
            if len(poly) < 6 or len(poly) % 2:
                return (f'polygon {k} has {len(poly)} coordinates; a polygon needs an even '
                        f'number of at least 6 (3 points)')
        return None
    return (f'must be a list of polygons or an RLE dict, got {type(segm).__name__}')


def rle_string_counts(counts: str) -> Optional[List[int]]:
    """Decode the run lengths of a COCO compressed RLE ``counts`` string.

    The string holds each run length (after the second, as the difference to the run two before)
    in groups of 5 bits, each group a character ``chr(48 + bits)`` with ``0x20`` meaning "more
    groups follow" and ``0x10`` the sign of the last group.

    Args:
        counts (str): The compressed ``counts``.

    Returns:
        list[int] or None: The run lengths, or None when the string is not a valid encoding
        (a character outside the alphabet or a number cut off at the end).
    """
    runs: List[int] = []
    pos, length = 0, len(counts)
    while pos < length:
        value, shift, more = 0, 0, True
        while more:
            if pos >= length:
                return None
            code = ord(counts[pos]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1f) << (5 * shift)
            more = bool(code & 0x20)
            pos += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _polygon_area(poly: Sequence[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2


def far_outside(polygons: Sequence[Sequence[float]], height: int, width: int) -> Optional[str]:
    """Report a polygon point more than the image's own size beyond its edge.

    No real annotation has one, and rasterising it (pycocotools walks every edge pixel by pixel)
    would take memory and time in proportion to the distance.

    Args:
        polygons (Sequence[Sequence[float]]): Flat ``[x0, y0, x1, y1, ...]`` polygons.
        height (int): Image height.
        width (int): Image width.

    Returns:
        str or None: The problem, or None when every point is within range.
    """
    for k, poly in enumerate(polygons):
        for x, y in zip(poly[0::2], poly[1::2]):
            if not (-width <= x <= 2 * width and -height <= y <= 2 * height):
                return (f'polygon {k} has the point ({x}, {y}), far outside the image of width '
                        f'{width} and height {height} (more than its size beyond an edge)')
    return None


def check_target(segm: Any, height: int, width: int) -> Optional[str]:
    """Check that a ``segmentation`` gives a usable target mask, without decoding the mask.

    First the format (:func:`check_segmentation`), then: a polygon list must have a polygon with
    a point inside the image (``0 <= x <= width``, ``0 <= y <= height``) and an enclosed area;
    a compressed RLE's ``counts`` must decode (see :func:`rle_string_counts`) to non-negative runs
    covering ``height * width`` pixels; an RLE must have a foreground pixel. Every check works on
    the coordinates or run lengths only, so it is cheap on large annotation files.

    Args:
        segm (Any): The ``segmentation`` value of an instance annotation.
        height (int): Image height.
        width (int): Image width.

    Returns:
        str or None: Why the target is invalid, or None when it is valid.
    """
    problem = check_segmentation(segm, height, width)
    if problem:
        return problem
    if isinstance(segm, list):
        far = far_outside(segm, height, width)
        if far:
            return far
        # A polygon overlaps the image only if its bounding box does; the rare polygon whose box
        # overlaps but whose area does not is caught when DecodeTargetMasks decodes it.
        inside = [poly for poly in segm
                  if min(poly[0::2]) < width and max(poly[0::2]) > 0
                  and min(poly[1::2]) < height and max(poly[1::2]) > 0]
        if not inside:
            xs = [v for poly in segm for v in poly[0::2]]
            ys = [v for poly in segm for v in poly[1::2]]
            return (f'the polygons lie wholly outside the image: points span x {min(xs)}..'
                    f'{max(xs)}, y {min(ys)}..{max(ys)} for an image of width {width} and '
                    f'height {height}')
        if not any(_polygon_area(poly) > 0 for poly in inside):
            return 'the polygons enclose no area (collinear or repeated points): an empty mask'
        return None
    counts = segm['counts']
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None or any(r < 0 for r in runs):
            return f'invalid compressed RLE "counts" {counts[:40]!r}: not a COCO run-length string'
        if sum(runs) != height * width:
            return (f'invalid compressed RLE "counts": the runs cover {sum(runs)} pixels, but the '
                    f'mask has {height} x {width} = {height * width}')
        counts = runs
    if not any(counts[1::2]):
        return 'the RLE decodes to an empty mask (no foreground pixel)'
    return None


class SkippedTargets:
    """What an adapter does with an invalid target: raise it, or, under
    ``skip_invalid_targets=True``, drop it and log how many and which once the file is read.

    Usage: ``skipped.drop(err)`` for each :class:`InvalidTargetError` (it raises ``err`` when
    skipping is off, so the caller drops the target only when it returns), then ``skipped.log()``.

    Args:
        dataset (str): The dataset class or source name, for the log line.
        file (str): The annotation file (or folder) read.
        enabled (bool): The adapter's ``skip_invalid_targets``.
    """

    def __init__(self, dataset: str, file: str, enabled: bool) -> None:
        self.dataset = dataset
        self.file = file
        self.enabled = enabled
        self.items: List[str] = []

    def drop(self, err: 'InvalidTargetError', with_file: bool = False) -> None:
        """Record ``err``'s target as dropped, or raise ``err`` when skipping is off.

        Args:
            err (InvalidTargetError): The invalid target.
            with_file (bool): Name ``err.file`` in the log too (when it is not :attr:`file`).
        """
        if not self.enabled:
            raise err
        where = f'{err.file}, {err.record}' if with_file else err.record
        self.items.append(f'{where}, field {err.field!r}: {err.problem}')

    def log(self, shown: int = 20) -> None:
        """Log how many targets were dropped and which (the first ``shown`` of them)."""
        if not self.items:
            return
        listed = '; '.join(self.items[:shown])
        more = f'; ... and {len(self.items) - shown} more' if len(self.items) > shown else ''
        print_log(f'{self.dataset}: skip_invalid_targets=True dropped {len(self.items)} invalid '
                  f'target(s) of {self.file}: {listed}{more}', logger='current',
                  level=logging.WARNING)


@DATASETS.register_module()
class MUSEDataset(BaseDataset):
    """MUSE (PixelLM's multi-target reasoning segmentation data) in mmengine's dataset protocol.

    Training (``test_mode=False``) gives one item per image: the pipeline draws one of the image's
    questions each time it is fetched (see ``SampleQuestion``), so an epoch visits every image once
    and, over epochs, every question. Evaluation (``test_mode=True``) gives one item per
    ``(image, question)`` pair in file order, so a metric covers every question exactly once.

    The official loader (``utils/multi_reason_seg_dataset.py``) instead draws a random image on
    every ``__getitem__`` (ignoring the index) and puts all of its questions into that one sample as
    separate conversations. Both see every question; ours keeps one conversation per data sample.

    Image paths follow the official layout: a record with ``file_name`` is a COCO train2014 image
    under ``data_prefix['img_path']``; a record with only ``coco_url`` is a COCO 2017 image under
    ``data_prefix['train2017_img_path']`` when the url contains ``train2017`` and under
    ``data_prefix['val2017_img_path']`` otherwise (the file name is the url's last part).

    Every record is checked at load time; the first bad one raises :class:`DatasetFormatError`
    naming the file, the record (index and ``id``) and the field. Checked: the json itself (with
    json's line and column), required fields (``file_name`` or ``coco_url``, ``height``, ``width``,
    ``questions``, ``answers``, each instance's ``segmentation``), ``answers`` and ``text_answers``
    having one entry per question, every question naming at least one target (a MUSE question
    always has targets; an empty one would train the model to write no codebook token), one
    ``{seg}`` per target in each text answer, a ``category_name`` on every instance whose answer
    has to be composed (no text answer), and each segmentation's target (see
    :func:`check_target`: a polygon or RLE that gives an empty mask or lies outside the image, a
    degenerate polygon or invalid RLE counts raise :class:`InvalidTargetError`, which names the
    question too).

    Args:
        ann_file (str): Path of the MUSE json (``muse_train.json``, ``muse_val.json``, ...),
            relative to ``data_root`` unless absolute.
        data_root (str): Root joined with ``ann_file`` and every ``data_prefix`` entry.
            Defaults to ``''``.
        data_prefix (dict): Image folders. ``img_path`` for ``file_name`` records,
            ``train2017_img_path`` and ``val2017_img_path`` for ``coco_url`` records. Keys not given
            keep the official layout (:data:`DEFAULT_DATA_PREFIX`).
        pipeline (Sequence[dict | Callable]): Transforms. Defaults to ``()``.
        test_mode (bool): One item per question instead of per image. Defaults to False.
        lazy_init (bool): Defer reading ``ann_file`` until first use. Defaults to False.
        serialize_data (bool): Keep the data list as one pickled buffer shared by dataloader
            workers. Defaults to True.
        skip_invalid_targets (bool): Drop a question whose target is invalid (see
            :func:`check_target`; a record left without questions is dropped too) and log how
            many and which, instead of raising :class:`InvalidTargetError`. Defaults to False.
        **kwargs: Other :class:`mmengine.dataset.BaseDataset` arguments (``metainfo``,
            ``indices``, ``max_refetch``).
    """

    METAINFO: dict = dict(dataset_name='MUSE')

    def __init__(self,
                 ann_file: str,
                 data_root: str = '',
                 data_prefix: Optional[dict] = None,
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 serialize_data: bool = True,
                 skip_invalid_targets: bool = False,
                 **kwargs) -> None:
        self.skip_invalid_targets = skip_invalid_targets
        prefix = dict(DEFAULT_DATA_PREFIX)
        prefix.update(data_prefix or {})
        # Built here from pixellm's registry: mmengine's Compose resolves names in the current
        # default scope, which outside a pixellm runner would pick mmcv's LoadImageFromFile or fail.
        transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(ann_file=ann_file, data_root=data_root, data_prefix=prefix,
                         pipeline=transforms, test_mode=test_mode, lazy_init=lazy_init,
                         serialize_data=serialize_data, **kwargs)

    def load_data_list(self) -> List[dict]:
        """Read and validate the MUSE json and turn its records into data infos.

        Returns:
            list[dict]: Per image (train) or per question (test): ``img_path``,
            ``img_path_field`` (``'file_name'`` or ``'coco_url'``), ``img_id``,
            ``record_index``, ``ann_file``, ``height``, ``width``, ``questions``, ``answers``
            (instance dicts reduced to id, category and segmentation), ``text_answers`` (a string
            or None per question) and, in test mode, ``question_index``.

        Raises:
            DatasetFormatError: On the first malformed record, naming file, record and field.
        """
        records = self._read_records()
        data_list = []
        skipped = SkippedTargets(type(self).__name__, self.ann_file, self.skip_invalid_targets)
        for index, record in enumerate(records):
            info = self.parse_record(record, index, skipped)
            if info is None:
                continue
            if self.test_mode:
                for q in range(len(info['questions'])):
                    data_list.append(dict(info, question_index=q))
            else:
                data_list.append(info)
        skipped.log()
        return data_list

    def _read_records(self) -> list:
        try:
            text = get_text(self.ann_file)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f'MUSE annotation file {self.ann_file!r} does not exist (ann_file joined with '
                f'data_root={self.data_root!r})') from err
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(self.ann_file, '', '<json>',
                                     f'not valid json: {err.msg} at line {err.lineno}, '
                                     f'column {err.colno}') from err
        if not isinstance(records, list):
            raise DatasetFormatError(self.ann_file, '', '<top level>',
                                     f'a MUSE file is a json list of per-image records, got a '
                                     f'{type(records).__name__}')
        return records

    def _image_path(self, record: dict,
                    fail: Callable[[str, str], DatasetFormatError]) -> Tuple[str, str]:
        if isinstance(record.get('file_name'), str) and record['file_name']:
            return osp.join(self.data_prefix['img_path'], record['file_name']), 'file_name'
        url = record.get('coco_url')
        if isinstance(url, str) and url:
            key = 'train2017_img_path' if 'train2017' in url else 'val2017_img_path'
            return osp.join(self.data_prefix[key], url.split('/')[-1]), 'coco_url'
        raise fail('file_name', 'missing: a record needs "file_name" (COCO train2014) or '
                   '"coco_url" (COCO 2017) to locate its image')

    def parse_record(self, record: Any, index: int,
                     skipped: Optional[SkippedTargets] = None) -> Optional[dict]:
        """Validate one raw MUSE record and reduce it to the data info the pipeline reads.

        Args:
            record (Any): One element of the json list.
            index (int): Its position in the list, for error messages.
            skipped (SkippedTargets, optional): Raises or drops invalid targets (a dropped
                target drops the question that asks for it); None raises on the first one.

        Returns:
            dict or None: The per-image data info (see :meth:`load_data_list`); None when every
            question of the record was dropped.

        Raises:
            DatasetFormatError: Naming the file, the record and the field at fault
                (:class:`InvalidTargetError` for a target that gives no usable mask).
        """
        if skipped is None:
            skipped = SkippedTargets(type(self).__name__, self.ann_file, enabled=False)
        record_id = record.get('id') if isinstance(record, dict) else None
        where = describe_record(index, record_id)

        def fail(field: str, problem: str) -> DatasetFormatError:
            return DatasetFormatError(self.ann_file, where, field, problem)

        if not isinstance(record, dict):
            raise fail('<record>', f'a record must be a json object, got {type(record).__name__}')
        img_path, img_path_field = self._image_path(record, fail)
        for key in ('height', 'width'):
            if key not in record:
                raise fail(key, 'missing')
            if not isinstance(record[key], int) or isinstance(record[key], bool) \
                    or record[key] <= 0:
                raise fail(key, f'must be a positive integer, got {record[key]!r}')
        height, width = record['height'], record['width']

        for key in ('questions', 'answers'):
            if key not in record:
                raise fail(key, 'missing')
            if not isinstance(record[key], list):
                raise fail(key, f'must be a list, got {type(record[key]).__name__}')
        questions, answers = record['questions'], record['answers']
        if not questions:
            raise fail('questions', 'empty: a MUSE record has at least one question')
        if len(answers) != len(questions):
            raise fail('answers', f'has {len(answers)} entries for {len(questions)} questions')
        text_answers = record.get('text_answers')
        if text_answers is None:
            text_answers = [None] * len(questions)
        elif not isinstance(text_answers, list):
            raise fail('text_answers', f'must be a list, got {type(text_answers).__name__}')
        elif len(text_answers) != len(questions):
            raise fail('text_answers',
                       f'has {len(text_answers)} entries for {len(questions)} questions')

        kept_answers = []
        dropped_questions = set()
        for q, (question, targets, text) in enumerate(zip(questions, answers, text_answers)):
            if not isinstance(question, str) or not question.strip():
                raise fail(f'questions[{q}]', f'must be a non-empty string, got {question!r}')
            if not isinstance(targets, list):
                raise fail(f'answers[{q}]',
                           f'must be a list of instance annotations, got {type(targets).__name__}')
            if not targets:
                raise fail(f'answers[{q}]', 'empty: every MUSE question names at least one '
                           'target instance')
            if text is not None:
                if not isinstance(text, str):
                    raise fail(f'text_answers[{q}]',
                               f'must be a string or null, got {type(text).__name__}')
                num_seg = text.count(SEG_PLACEHOLDER)
                if num_seg != len(targets):
                    relation = 'more' if num_seg > len(targets) else 'fewer'
                    raise fail(f'text_answers[{q}]',
                               f'{relation} {SEG_PLACEHOLDER} than instances: {num_seg} '
                               f'{SEG_PLACEHOLDER} for {len(targets)} instances in answers[{q}]')
            kept_targets = []
            for t, inst in enumerate(targets):
                field = f'answers[{q}][{t}]'
                if not isinstance(inst, dict):
                    raise fail(field, f'must be an instance annotation object, got '
                               f'{type(inst).__name__}')
                if 'segmentation' not in inst:
                    raise fail(f'{field}.segmentation', 'missing')
                problem = check_target(inst['segmentation'], height, width)
                if problem:
                    invalid = InvalidTargetError(
                        self.ann_file, f'{where}, question {q} {question!r}, target {t}'
                        f'{_instance_id(inst)}', f'{field}.segmentation', problem)
                    skipped.drop(invalid)
                    dropped_questions.add(q)
                # Only a composed answer (no text answer) needs the instance's name.
                if text is None and not (isinstance(inst.get('category_name'), str)
                                         and inst['category_name']):
                    raise fail(f'{field}.category_name',
                               'missing: needed to compose the answer because the question has '
                               'no text answer')
                kept_targets.append({k: inst[k] for k in _KEPT_INSTANCE_KEYS if k in inst})
            kept_answers.append(kept_targets)

        if dropped_questions:
            keep = [q for q in range(len(questions)) if q not in dropped_questions]
            if not keep:
                return None
            questions = [questions[q] for q in keep]
            text_answers = [text_answers[q] for q in keep]
            kept_answers = [kept_answers[q] for q in keep]
        has_ann_list = isinstance(record.get('ann_list'), list)
        all_objects = record['ann_list'] if has_ann_list else []
        kept_objects, skipped_objects = [], []
        for i, ann in enumerate(all_objects):
            usable = isinstance(ann, dict) and 'segmentation' in ann
            (kept_objects if usable else skipped_objects).append(i)
        return dict(img_path=img_path, img_path_field=img_path_field, img_id=record_id,
                    record_index=index,
                    ann_file=self.ann_file, height=height, width=width,
                    questions=list(questions), answers=kept_answers,
                    text_answers=list(text_answers),
                    # Every object of the image (COCO ``ann_list``), for the union-of-all-objects
                    # baseline and for semantic label maps (the demo project's RenderSemanticMap);
                    # the question pipeline does not read them. Checked where they are used.
                    all_segmentations=[all_objects[i]['segmentation'] for i in kept_objects],
                    # None without an ann_list list: a semantic map cannot be drawn from it.
                    all_category_ids=[all_objects[i].get('category_id') for i in kept_objects]
                    if has_ann_list else None,
                    all_ann_indices=kept_objects if has_ann_list else None,
                    # Entries that are not objects with a segmentation, for a semantic map's
                    # error (the baseline skips them).
                    ann_list_skipped=skipped_objects)
