"""A small synthetic MUSE: coloured shapes with referring and reasoning questions, written in the
exact MUSE json format so the real loader, pipeline and metrics run on it without any download.

Scenes are built so that every answer is unambiguous from the pixels: colours are distinct within
an image, shapes do not overlap, sizes come in two well-separated classes and spatial relations
are only asked when no object is close to the dividing line. Each mask is what pycocotools
decodes from the stored annotation, and the image is painted from that same mask, so the ground
truth matches the pixels exactly.
"""
import json
import os
import os.path as osp
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.datasets.transforms.conversation import join_items
from pixellm.engine.checkpoint import atomic_write_text

# Bump when the output for a given seed changes, so an old dataset on disk is not reused.
# 2: each answer's targets went left to right. 3: they go in reading order (top edge, then left
# edge); same scenes, question kinds and targets as version 2 for a seed, only their order (in
# the answers and in the names of referring questions) changed.
GENERATOR_VERSION = 3
MARKER_NAME = '.muse_demo_complete.json'

# Six colours far apart in RGB, with the names the questions use.
COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (220, 30, 30),
    'orange': (250, 140, 0),
    'yellow': (240, 220, 30),
    'green': (40, 170, 50),
    'blue': (30, 70, 220),
    'purple': (140, 40, 190),
}
SHAPES = ('circle', 'square', 'triangle', 'star', 'diamond')
# COCO-style category ids, one per shape.
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(SHAPES)}
# Size classes as the radius of the circle of equal area, as a fraction of the image's shorter
# side: a small shape is at least 16% of the side across, a large one has at least 1.8x the area
# of any small one, whatever the shapes.
SIZE_RADIUS = dict(small=(0.08, 0.095), large=(0.13, 0.145))
# Area of each outline per squared bounding radius (see shape_polygon), used to give all shapes of
# a size class the same area.
_AREA_PER_RADIUS2 = dict(circle=np.pi, square=2.0, triangle=3 * np.sqrt(3) / 4,
                         star=5 * 0.5 * np.sin(np.pi / 5), diamond=1.6)
_NUMBER_WORDS = {1: 'one', 2: 'two', 3: 'three'}
_SPLIT_CODES = dict(train=0, val=1)
# Minimum horizontal/vertical gap between a relation's anchor and any other object's centre, as
# a fraction of the image side, so "left of" is never a judgement call.
_RELATION_GAP = 0.12
# Superlatives are asked only when the extreme object is clearly bigger/smaller than the next.
_SUPERLATIVE_RATIO = 1.4


def _regular_polygon(cx: float, cy: float, radius: float, num: int,
                     phase: float) -> List[Tuple[float, float]]:
    angles = phase + 2 * np.pi * np.arange(num) / num
    return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]


def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> List[float]:
    """Return the outline of ``shape`` inside the circle of ``radius`` around ``(cx, cy)``.

    Args:
        shape (str): One of :data:`SHAPES`.
        cx (float): Centre x in pixels.
        cy (float): Centre y in pixels.
        radius (float): Radius of the bounding circle in pixels.

    Returns:
        list[float]: Flat COCO polygon ``[x0, y0, x1, y1, ...]`` rounded to 0.01 px.
    """
    if shape == 'circle':
        points = _regular_polygon(cx, cy, radius, 32, 0.0)
    elif shape == 'square':
        half = radius / np.sqrt(2)
        points = [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half),
                  (cx - half, cy + half)]
    elif shape == 'triangle':
        # Pointing up; the bounding circle is the circumcircle.
        points = _regular_polygon(cx, cy, radius, 3, -np.pi / 2)
    elif shape == 'star':
        outer = _regular_polygon(cx, cy, radius, 5, -np.pi / 2)
        inner = _regular_polygon(cx, cy, radius * 0.5, 5, -np.pi / 2 + np.pi / 5)
        points = [p for pair in zip(outer, inner) for p in pair]
    elif shape == 'diamond':
        points = [(cx, cy - radius), (cx + radius * 0.8, cy), (cx, cy + radius),
                  (cx - radius * 0.8, cy)]
    else:
        raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')
    return [round(float(v), 2) for point in points for v in point]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Encode a boolean mask as COCO's uncompressed RLE (column-major run lengths from 0s).

    Args:
        mask (np.ndarray): ``(H, W)`` boolean mask.

    Returns:
        dict: ``dict(size=[H, W], counts=[...])`` with integer run lengths.
    """
    flat = mask.astype(np.uint8).flatten(order='F')
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        # Runs alternate starting with zeros, so a mask starting with a 1 opens with a 0-run.
        counts = [0] + counts
    return dict(size=[int(mask.shape[0]), int(mask.shape[1])], counts=[int(c) for c in counts])


def _phrase(obj: dict) -> str:
    return f'{obj["colour"]} {obj["shape"]}'


def _reading_order(objs: Sequence[dict]) -> List[dict]:
    """Objects by their top edge, then their left edge: the order in which a raster scan of the
    image (and so the row-major sequence of image tokens an LLM reads) first meets them."""
    return sorted(objs, key=lambda o: (o['ann']['bbox'][1], o['ann']['bbox'][0]))


def _the_list(objs: Sequence[dict]) -> str:
    return join_items([f'the {_phrase(o)}' for o in _reading_order(objs)])


def _answer_list(objs: Sequence[dict]) -> str:
    return join_items([f'the {_phrase(o)} {{seg}}' for o in _reading_order(objs)])


def _plural(shape: str) -> str:
    return shape + 's'


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# A question generator returns (question, targets in answer order, text answer) or None when the
# scene does not allow an unambiguous question of its kind.
QuestionSpec = Optional[Tuple[str, List[dict], str]]


def _referring(objs: List[dict], rng: np.random.Generator) -> QuestionSpec:
    k = int(rng.integers(1, min(3, len(objs)) + 1))
    picked = [objs[i] for i in sorted(rng.choice(len(objs), size=k, replace=False))]
    names = _the_list(picked)
    question = [f'Segment {names}.', f'Where is {names} in this image?' if k == 1 else
                f'Where are {names} in this image?', f'Can you find {names}?'][rng.integers(3)]
    # MUSE text answers put each target's {seg} right after the words naming it.
    answer = [f'{_capitalise(_answer_list(picked))}.',
              f'Sure, {_answer_list(picked)}.'][rng.integers(2)]
    return question, picked, answer


def _every_shape(objs: List[dict], rng: np.random.Generator) -> QuestionSpec:
    by_shape: Dict[str, List[dict]] = {}
    for o in objs:
        by_shape.setdefault(o['shape'], []).append(o)
    shapes = sorted(s for s, group in by_shape.items() if len(group) <= 3)
    if not shapes:
        return None
    shape = shapes[rng.integers(len(shapes))]
    picked = by_shape[shape]
    question = [f'Segment every {shape}.', f'Where are all the {_plural(shape)}?',
                f'Find all {_plural(shape)} in the picture.'][rng.integers(3)]
    if len(picked) == 1:
        answer = f'There is one {shape}: {_answer_list(picked)}.'
    else:
        answer = (f'There are {_NUMBER_WORDS[len(picked)]} {_plural(shape)}: '
                  f'{_answer_list(picked)}.')
    return question, picked, answer


def _size_class(objs: List[dict], rng: np.random.Generator) -> QuestionSpec:
    sizes = [s for s in ('large', 'small') if 1 <= sum(o['size'] == s for o in objs) <= 3]
    if not sizes:
        return None
    size = sizes[rng.integers(len(sizes))]
    picked = [o for o in objs if o['size'] == size]
    question = [f'Segment all the {size} shapes.', f'Which objects are {size}?'][rng.integers(2)]
    if len(picked) == 1:
        answer = f'The only {size} shape is {_answer_list(picked)}.'
    else:
        answer = f'The {size} shapes are {_answer_list(picked)}.'
    return question, picked, answer


_RELATIONS = {
    # name: (axis, sign): target if sign * (coord - anchor) > 0.
    'to the left of': (0, -1),
    'to the right of': (0, 1),
    'above': (1, -1),
    'below': (1, 1),
}


def _relation(objs: List[dict], rng: np.random.Generator, size: Tuple[int, int]) -> QuestionSpec:
    height, width = size
    options = []
    for anchor in objs:
        for relation, (axis, sign) in _RELATIONS.items():
            extent = width if axis == 0 else height
            others = [o for o in objs if o is not anchor]
            deltas = [o['centre'][axis] - anchor['centre'][axis] for o in others]
            if any(abs(d) < _RELATION_GAP * extent for d in deltas):
                continue
            picked = [o for o, d in zip(others, deltas) if sign * d > 0]
            if 1 <= len(picked) <= 3:
                options.append((anchor, relation, picked))
    if not options:
        return None
    anchor, relation, picked = options[rng.integers(len(options))]
    ref = f'the {_phrase(anchor)}'
    question = [f'Which objects are {relation} {ref}?',
                f'Segment everything {relation} {ref}.'][rng.integers(2)]
    verb = 'is' if len(picked) == 1 else 'are'
    answer = f'{_capitalise(_answer_list(picked))} {verb} {relation} {ref}.'
    return question, picked, answer


def _superlative(objs: List[dict], rng: np.random.Generator) -> QuestionSpec:
    order = sorted(objs, key=lambda o: o['area'])
    options = []
    if order[-1]['area'] >= _SUPERLATIVE_RATIO * order[-2]['area']:
        options.append(('largest', order[-1]))
    if order[1]['area'] >= _SUPERLATIVE_RATIO * order[0]['area']:
        options.append(('smallest', order[0]))
    if not options:
        return None
    word, obj = options[rng.integers(len(options))]
    question = [f'What is the {word} object?', f'Segment the {word} shape.'][rng.integers(2)]
    answer = f'The {word} object is {_answer_list([obj])}.'
    return question, [obj], answer


# Referring questions dominate, as the reasoning kinds reuse the same visual vocabulary.
_KINDS: List[Tuple[str, float]] = [('referring', 0.4), ('every_shape', 0.2),
                                   ('size_class', 0.15), ('relation', 0.15),
                                   ('superlative', 0.1)]
QUESTION_KINDS: Tuple[str, ...] = tuple(name for name, _ in _KINDS)


def _alternatives(words) -> str:
    return '(?:' + '|'.join(re.escape(w) for w in words) + ')'


_OBJECT = f'{_alternatives(COLOURS)} {_alternatives(SHAPES)}'
_NAMED = re.compile(rf'\b({_alternatives(COLOURS)}) ({_alternatives(SHAPES)})\b')
_SHAPE = _alternatives(SHAPES)
_SHAPES = _alternatives(_plural(s) for s in SHAPES)
_OBJECTS = rf'the {_OBJECT}(?:(?:, | and )the {_OBJECT})*'
# The question templates of the generators above, as full-match patterns (in _KINDS' names).
_QUESTION_PATTERNS = dict(
    referring=rf'(?:Segment {_OBJECTS}\.|Where (?:is|are) {_OBJECTS} in this image\?|'
              rf'Can you find {_OBJECTS}\?)',
    every_shape=rf'(?:Segment every {_SHAPE}\.|Where are all the {_SHAPES}\?|'
                rf'Find all {_SHAPES} in the picture\.)',
    size_class=r'(?:Segment all the (?:large|small) shapes\.|Which objects are (?:large|small)\?)',
    relation=rf'(?:Which objects are {_alternatives(_RELATIONS)} the {_OBJECT}\?|'
             rf'Segment everything {_alternatives(_RELATIONS)} the {_OBJECT}\.)',
    superlative=r'(?:What is the (?:largest|smallest) object\?|'
                r'Segment the (?:largest|smallest) shape\.)',
)


def question_kind(question: str) -> str:
    """The kind of a question this generator wrote: one of ``QUESTION_KINDS``.

    For analysing a model's answers by kind (this project's ``tools/demo_answer_report.py``): the
    records keep MUSE's format, which has no field for it.

    Raises:
        ValueError: ``question`` matches none of the generator's templates.
    """
    for kind, pattern in _QUESTION_PATTERNS.items():
        if re.fullmatch(pattern, question):
            return kind
    raise ValueError(f'{question!r} is not a question of the synthetic MUSE generator (version '
                     f'{GENERATOR_VERSION}); its kinds: {", ".join(QUESTION_KINDS)}')


def named_objects(text: str) -> List[Tuple[str, str]]:
    """The ``(colour, shape)`` pairs a question or answer names, in order of appearance.

    Case-insensitive; ``"Sure, the red circle [SEG0] and the blue star."`` gives ``[('red',
    'circle'), ('blue', 'star')]``.
    """
    return [(m.group(1), m.group(2)) for m in _NAMED.finditer(text.lower())]


def _place_objects(rng: np.random.Generator, height: int, width: int) -> List[dict]:
    side = min(height, width)
    wanted = int(rng.integers(2, 6))
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:wanted]]
    objs: List[dict] = []
    for colour in colours:
        size = ('small', 'large')[rng.integers(2)]
        lo, hi = SIZE_RADIUS[size]
        shape = SHAPES[rng.integers(len(SHAPES))]
        # The bounding radius that gives this shape the drawn circle-equivalent area.
        radius = float(rng.uniform(lo, hi)) * side * np.sqrt(np.pi / _AREA_PER_RADIUS2[shape])
        for _ in range(60):
            cx = float(rng.uniform(radius + 2, width - radius - 2))
            cy = float(rng.uniform(radius + 2, height - radius - 2))
            # Bounding circles 4 px apart: shapes never touch, so every mask is whole.
            if all(np.hypot(cx - o['centre'][0], cy - o['centre'][1]) > radius + o['radius'] + 4
                   for o in objs):
                objs.append(dict(colour=colour, shape=shape, size=size, radius=radius,
                                 centre=(cx, cy)))
                break
    return objs


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.integers(205, 240) + rng.integers(-8, 9, size=3)
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = base
    if rng.random() < 0.5:
        # Mild texture: a soft gradient and faint stripes, nothing object-like.
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = float(rng.uniform(0, np.pi))
        coord = xx * np.cos(angle) + yy * np.sin(angle)
        img += (coord / max(height, width) * rng.uniform(-15, 15))[..., None]
        img += (4.0 * np.sin(coord / rng.uniform(4, 9)))[..., None]
    return img


def _make_scene(rng: np.random.Generator, height: int, width: int, image_id: int,
                file_name: str, with_text_answers: bool) -> Tuple[dict, np.ndarray]:
    while True:
        objs = _place_objects(rng, height, width)
        if len(objs) >= 2:
            break
    # Annotation ids go left to right. Answers (and the names of a referring question) list their
    # targets in reading order (_reading_order), an order the image shows: the answer-order metric
    # pairs the answer's k-th target with the k-th mask, and placement order would be unlearnable.
    # Left to right (version 2) was learnable too, but more was lost to order: 0.079-0.088 of
    # the demo's val gIoU against 0.052-0.059 (gIoU with IoU-optimal matching minus gIoU in
    # answer order; seeds 0-2): the LLM reads the image tokens row by row.
    objs.sort(key=lambda o: (o['centre'][0], o['centre'][1]))
    img = _background(rng, height, width)
    ann_list = []
    for k, obj in enumerate(objs):
        polygon = shape_polygon(obj['shape'], obj['centre'][0], obj['centre'][1], obj['radius'])
        rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
        mask = mask_utils.decode(rle).astype(bool)
        colour = np.array(COLOURS[obj['colour']], dtype=np.float32)
        # A gentle shading keeps the colour unmistakable but not perfectly flat.
        shade = 1.0 + 0.06 * np.linspace(-1, 1, height, dtype=np.float32)[:, None, None]
        img = np.where(mask[..., None], colour * shade, img)
        # Most instances keep COCO's polygons; some are RLE, as crowd/LVIS annotations are.
        kind = rng.random()
        if kind < 0.6:
            segmentation = [polygon]
        elif kind < 0.85:
            segmentation = uncompressed_rle(mask)
        else:
            segmentation = dict(size=[height, width], counts=rle['counts'].decode('ascii'))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        obj['area'] = int(mask.sum())
        obj['ann'] = dict(id=image_id * 10 + k, image_id=image_id,
                          category_id=CATEGORY_IDS[obj['shape']], category_name=obj['shape'],
                          rephrased_name=_phrase(obj), segmentation=segmentation,
                          area=obj['area'], bbox=[x, y, w, h], iscrowd=0)
        ann_list.append(obj['ann'])

    generators: Dict[str, Callable[[], QuestionSpec]] = dict(
        referring=lambda: _referring(objs, rng),
        every_shape=lambda: _every_shape(objs, rng),
        size_class=lambda: _size_class(objs, rng),
        relation=lambda: _relation(objs, rng, (height, width)),
        superlative=lambda: _superlative(objs, rng),
    )
    names = [n for n, _ in _KINDS]
    weights = np.array([w for _, w in _KINDS])
    wanted = int(rng.integers(2, 4))
    questions, answers, text_answers = [], [], []
    asked = set()
    for _ in range(12):
        if len(questions) == wanted:
            break
        kind = names[rng.choice(len(names), p=weights / weights.sum())]
        spec = generators[kind]()
        if spec is None:
            continue
        question, picked, text = spec
        picked = _reading_order(picked)
        # Two wordings of one question about the same targets would add nothing.
        key = (kind, tuple(o['ann']['id'] for o in picked))
        if key in asked:
            continue
        asked.add(key)
        questions.append(question)
        answers.append([dict(o['ann']) for o in picked])
        text_answers.append(text)
    if not questions:
        # Referring always applies, so a record never ends up without a question.
        question, picked, text = _referring(objs, rng)
        picked = _reading_order(picked)
        questions, answers, text_answers = [question], [[dict(o['ann']) for o in picked]], [text]

    record = dict(id=image_id, file_name=file_name, height=height, width=width,
                  ann_list=ann_list, questions=questions, answers=answers)
    if with_text_answers:
        record['text_answers'] = text_answers
    return record, np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _write_json_atomic(path: str, data) -> None:
    atomic_write_text(json.dumps(data, separators=(',', ':')), path)


def _image_name(split: str, index: int) -> str:
    return f'{split}_{index:06d}.png'


def _outputs_present(paths: Dict[str, str], num_train: int, num_val: int) -> bool:
    if not (osp.isfile(paths['train_ann']) and osp.isfile(paths['val_ann'])):
        return False
    present = set(os.listdir(paths['img_dir'])) if osp.isdir(paths['img_dir']) else set()
    return all(_image_name(split, i) in present
               for split, num in (('train', num_train), ('val', num_val)) for i in range(num))


def _split_records(out_dir: str, split: str, num: int, seed: int, min_size: int, max_size: int,
                   no_text_answer_ratio: float) -> List[dict]:
    records = []
    img_dir = osp.join(out_dir, 'images')
    for i in range(num):
        # One generator per image: image i is the same whatever num_train/num_val are.
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], i])
        height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        image_id = (1 + _SPLIT_CODES[split]) * 1_000_000 + i
        file_name = _image_name(split, i)
        record, img = _make_scene(rng, height, width, image_id, file_name,
                                  with_text_answers=rng.random() >= no_text_answer_ratio)
        Image.fromarray(img).save(osp.join(img_dir, file_name), compress_level=6)
        records.append(record)
    return records


def generate_muse_scenes(out_dir: str,
                         num_train: int = 1200,
                         num_val: int = 150,
                         seed: int = 0,
                         min_size: int = 160,
                         max_size: int = 256,
                         overwrite: bool = False,
                         no_text_answer_ratio: float = 0.2) -> Dict[str, object]:
    """Write a synthetic MUSE dataset: ``images/*.png``, ``muse_train.json``, ``muse_val.json``.

    Every record has MUSE's keys (``id``, ``file_name``, ``height``, ``width``, ``ann_list``,
    ``questions``, ``answers`` and, for about ``1 - no_text_answer_ratio`` of the records,
    ``text_answers``); instances carry ``category_name`` (the shape), ``rephrased_name`` (colour and
    shape), ``category_id``, ``bbox``, ``area`` and a ``segmentation`` that is a polygon (about
    60%), an uncompressed RLE (25%) or a compressed RLE (15%). Each image holds 2-5
    non-overlapping shapes of distinct colours and has 2-3 questions of five kinds naming 1-3
    targets: referring ("Segment the red circle and the blue square."), every-shape ("Segment
    every triangle."), size class ("Which objects are small?"), relation ("Which objects are to
    the left of the green star?") and superlative ("What is the largest object?").

    The output depends only on the arguments (image ``i`` of a split depends only on ``seed``, the
    split and ``i``). A complete dataset written with the same arguments (marker, both json files
    and every image present) is reused; one written by another generator version with the same
    arguments is replaced; json files are
    written through a temporary file and ``os.replace``, and a completion marker is written last,
    so an interrupted run is never taken for a complete one. The defaults take about 10 s on one
    CPU core (see the report of this project's ``tools/generate_demo_data.py``).

    Args:
        out_dir (str): Output folder (created).
        num_train (int): Training images. Defaults to 1200.
        num_val (int): Validation images. Defaults to 150.
        seed (int): Seed. Defaults to 0.
        min_size (int): Smallest image side in pixels. Defaults to 160.
        max_size (int): Largest image side in pixels. Defaults to 256.
        overwrite (bool): Regenerate even when a complete dataset exists. Defaults to False.
        no_text_answer_ratio (float): Fraction of records without ``text_answers``, whose answers
            the loader composes from instance names. Defaults to 0.2.

    Returns:
        dict: ``root``, ``img_dir``, ``train_ann``, ``val_ann`` and ``marker`` (paths), and
        ``reused`` (bool, True when an existing complete dataset was kept).

    Raises:
        FileExistsError: ``out_dir`` holds a complete dataset written with other arguments and
            ``overwrite`` is False.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f'num_train and num_val must be >= 0, got {num_train}, {num_val}')
    if not 64 <= min_size <= max_size:
        raise ValueError(f'need 64 <= min_size <= max_size, got {min_size}, {max_size}')
    if not 0.0 <= no_text_answer_ratio <= 1.0:
        raise ValueError(f'no_text_answer_ratio must be in [0, 1], got {no_text_answer_ratio}')
    params = dict(version=GENERATOR_VERSION, num_train=num_train, num_val=num_val, seed=seed,
                  min_size=min_size, max_size=max_size,
                  no_text_answer_ratio=no_text_answer_ratio)
    paths = dict(root=out_dir, img_dir=osp.join(out_dir, 'images'),
                 train_ann=osp.join(out_dir, 'muse_train.json'),
                 val_ann=osp.join(out_dir, 'muse_val.json'),
                 marker=osp.join(out_dir, MARKER_NAME))

    if osp.isfile(paths['marker']) and not overwrite:
        with open(paths['marker']) as f:
            existing = json.load(f)
        if existing == params and _outputs_present(paths, num_train, num_val):
            return dict(paths, reused=True)
        # Written by another generator version with the same arguments: replaced.
        same_request = {k: v for k, v in existing.items() if k != 'version'} == \
            {k: v for k, v in params.items() if k != 'version'}
        if existing != params and not same_request:
            raise FileExistsError(
                f'{out_dir} holds a synthetic MUSE dataset generated with {existing}, not '
                f'{params}; pass overwrite=True (--overwrite) to replace it')

    # The marker goes first, so that from here until the end the folder reads as incomplete.
    if osp.exists(paths['marker']):
        os.remove(paths['marker'])
    os.makedirs(paths['img_dir'], exist_ok=True)
    for name in os.listdir(paths['img_dir']):
        # Images of an earlier, larger run would otherwise linger next to the new ones.
        if name.endswith('.png') and name.split('_')[0] in _SPLIT_CODES:
            os.remove(osp.join(paths['img_dir'], name))
    for split, num, key in (('train', num_train, 'train_ann'), ('val', num_val, 'val_ann')):
        records = _split_records(out_dir, split, num, seed, min_size, max_size,
                                 no_text_answer_ratio)
        _write_json_atomic(paths[key], records)
    _write_json_atomic(paths['marker'], params)
    return dict(paths, reused=False)
