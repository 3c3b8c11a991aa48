"""Mutation fuzz of the MUSE, REFER, ReasonSeg and part-segmentation loaders.

Each case takes a valid annotation file, applies one seeded random mutation somewhere in it (a
field removed, a type changed, a number out of range, a string truncated, a list emptied), builds
the dataset and runs every item through image loading, question sampling and mask decoding. The
outcome must be a valid sample or the dataset's own clear error (``DatasetFormatError``, or
``FileNotFoundError`` naming a path) and never another exception.
"""
import copy
import json
import os.path as osp
import pickle
import random

import numpy as np
import pytest
from mmengine.logging import MMLogger
from refer_fixtures import instances, sentences, write_images
from test_reason_seg_dataset import REASON, labelme, rect, shape
from test_sem_seg_dataset import paco_json, write_image

from pixellm.datasets import (DatasetFormatError, MUSEDataset, PACOLVISSemSegDataset,
                              ReasonSegDataset, ReferSegDataset)
from pixellm.datasets.transforms import (DecodeTargetMasks, LoadImageFromFile, SampleQuestion,
                                         SampleReferPhrases, SampleSemSegTargets)

TINY = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'data', 'muse_tiny')
CASES_PER_LOADER = 150
REPLACEMENTS = (None, '', 'x', 0, -1, 7, 10**12, -3.5, float('nan'), True, [], {}, [[]], [0, 0])


def _paths(node, prefix=()):
    """Every path into a json-like structure (dict keys and list indices)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key, ))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            yield from _paths(value, prefix + (k, ))


def mutate(data, rng):
    """Apply one random mutation to a deep copy of ``data``; return it and a description."""
    data = copy.deepcopy(data)
    path = rng.choice([p for p in _paths(data) if p])
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    key, value = path[-1], parent[path[-1]]
    ops = ['remove', 'replace']
    if isinstance(value, str):
        ops.append('truncate')
    if isinstance(value, list) and value:
        ops += ['empty', 'drop_item']
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ops += ['out_of_range']
    op = rng.choice(ops)
    if op == 'remove':
        del parent[key]
    elif op == 'replace':
        parent[key] = copy.deepcopy(rng.choice(REPLACEMENTS))
    elif op == 'truncate':
        parent[key] = value[:rng.randrange(len(value) + 1)]
    elif op == 'empty':
        parent[key] = []
    elif op == 'drop_item':
        value.pop(rng.randrange(len(value)))
    else:
        parent[key] = rng.choice([-value - 1, value * 1000 + 999, 2**40, -2**40])
    return data, f'{op} at {list(path)}: {str(parent.get(key, "<removed>") if isinstance(parent, dict) else "")[:60]}'


def _outcome(build, fetch_steps):
    """'valid' or 'clear error'; any other exception propagates."""
    try:
        dataset = build()
        for index in range(len(dataset)):
            results = dataset.get_data_info(index)
            for step in fetch_steps:
                results = step(results)
                if results is None:  # a sampler's "draw another item"
                    break
    except DatasetFormatError:
        return 'clear error'
    except FileNotFoundError as err:
        assert '/' in str(err), f'FileNotFoundError without a path: {err}'
        return 'clear error'
    return 'valid'


def _run_fuzz(name, valid, write, build, steps, seed):
    rng = random.Random(seed)
    np.random.seed(seed)
    counts = {'valid': 0, 'clear error': 0}
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('ERROR')  # the warnings of skipped records would flood the output
    try:
        write(valid)
        assert _outcome(build, steps) == 'valid', f'{name}: the unmutated file must be valid'
        for case in range(CASES_PER_LOADER):
            data, what = mutate(valid, rng)
            write(data)
            try:
                counts[_outcome(build, steps)] += 1
            except Exception as err:  # noqa: BLE001 -- the report names the mutation
                raise AssertionError(f'{name} case {case} ({what}) raised '
                                     f'{type(err).__name__}: {err}') from err
    finally:
        logger.setLevel(level)
    print(f'{name}: {counts}')
    # Mutations that change nothing important (a dropped "area") and ones that break the file
    # must both occur, or the fuzz is not exercising the checks.
    assert counts['valid'] > 0 and counts['clear error'] > 0
    return counts


def test_muse_loader_fuzz(tmp_path):
    with open(osp.join(TINY, 'muse_tiny.json')) as f:
        valid = json.load(f)
    ann = tmp_path / 'muse.json'
    _run_fuzz('MUSE', valid, lambda d: ann.write_text(json.dumps(d)),
              lambda: MUSEDataset(ann_file=str(ann), data_root=TINY, serialize_data=False,
                                  data_prefix=dict(img_path='images',
                                                   train2017_img_path='images')),
              [LoadImageFromFile(), SampleQuestion(), DecodeTargetMasks()], seed=0)


def test_refer_loader_fuzz(tmp_path):
    refs = [dict(ref_id=100, ann_id=11, image_id=1, category_id=1, split='train',
                 sentences=sentences('man on left', 'the person')),
            dict(ref_id=101, ann_id=12, image_id=1, category_id=3, split='train',
                 sentences=sentences('red car', start=2)),
            dict(ref_id=102, ann_id=13, image_id=2, category_id=18, split='train',
                 sentences=sentences('dog', start=3))]
    valid = dict(refs=refs, instances=instances())
    folder = tmp_path / 'refer_seg' / 'refcoco'
    folder.mkdir(parents=True)
    write_images(tmp_path)

    def write(data):
        with open(folder / 'refs(unc).p', 'wb') as f:
            pickle.dump(data.get('refs'), f)
        (folder / 'instances.json').write_text(json.dumps(data.get('instances')))

    _run_fuzz('refer', valid, write,
              lambda: ReferSegDataset(data_root=str(tmp_path), serialize_data=False),
              [LoadImageFromFile(), SampleReferPhrases(), DecodeTargetMasks()], seed=1)


def test_reason_seg_loader_fuzz(tmp_path):
    valid = labelme(['What holds water?', 'Where are the flowers?'], True,
                    [shape('target', rect(2, 3, 9, 7)), shape('ignore', rect(4, 4, 6, 6)),
                     shape('flag', rect(10, 0, 15, 15))])
    folder = tmp_path / REASON / 'train'
    folder.mkdir(parents=True)
    write_image(folder / 'a.jpg', 16, 16)
    _run_fuzz('ReasonSeg', valid, lambda d: (folder / 'a.json').write_text(json.dumps(d)),
              lambda: ReasonSegDataset(data_root=str(tmp_path), serialize_data=False),
              [LoadImageFromFile(), SampleQuestion(), DecodeTargetMasks()], seed=2)


def test_part_seg_loader_fuzz(tmp_path):
    ann = tmp_path / 'vlpart/paco/annotations/paco_lvis_v1_train.json'
    ann.parent.mkdir(parents=True)
    write_image(tmp_path / 'coco/train2017/000000000001.jpg')
    write_image(tmp_path / 'coco/train2017/000000000002.jpg')
    valid = paco_json()
    valid['annotations'].append(dict(id=103, image_id=2, category_id=10,
                                     segmentation=[[1, 1, 6, 1, 6, 6, 1, 6]]))
    _run_fuzz('PACO-LVIS', valid, lambda d: ann.write_text(json.dumps(d)),
              lambda: PACOLVISSemSegDataset(data_root=str(tmp_path), serialize_data=False),
              [LoadImageFromFile(), SampleSemSegTargets(), DecodeTargetMasks()], seed=3)


@pytest.mark.parametrize('seed', [0])
def test_mutations_are_deterministic_per_seed(seed):
    data = dict(a=[1, 2, dict(b='text')], c=3)
    assert mutate(data, random.Random(seed)) == mutate(data, random.Random(seed))
