"""The synthetic MUSE generator: determinism, the real MUSE format, answers that match the pixels,
reuse of complete output and recovery from interrupted output."""
import filecmp
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from pixellm.datasets import MUSEDataset
from projects.pixellm_tiny_demo.pixellm_tiny_demo import muse_scenes
from projects.pixellm_tiny_demo.pixellm_tiny_demo.muse_scenes import (COLOURS, QUESTION_KINDS, SHAPES,
                                                    generate_muse_scenes, named_objects,
                                                    question_kind, uncompressed_rle)
from pixellm.datasets.transforms.loading import decode_segmentation
from pixellm.utils.constants import SEG_PLACEHOLDER

SMALL = dict(num_train=16, num_val=6, seed=3)


@pytest.fixture(scope='module')
def small_dataset(tmp_path_factory):
    return generate_muse_scenes(str(tmp_path_factory.mktemp('muse_demo')), **SMALL)


def load(path):
    with open(path) as f:
        return json.load(f)


def test_same_seed_gives_identical_files(small_dataset, tmp_path):
    again = generate_muse_scenes(str(tmp_path / 'again'), **SMALL)
    for key in ('train_ann', 'val_ann'):
        assert filecmp.cmp(small_dataset[key], again[key], shallow=False)
    names = sorted(os.listdir(small_dataset['img_dir']))
    assert names == sorted(os.listdir(again['img_dir']))
    assert len(names) == SMALL['num_train'] + SMALL['num_val']
    _, mismatch, errors = filecmp.cmpfiles(small_dataset['img_dir'], again['img_dir'], names,
                                           shallow=False)
    assert not mismatch and not errors


def test_other_seed_gives_other_scenes(small_dataset, tmp_path):
    other = generate_muse_scenes(str(tmp_path / 'other'), **dict(SMALL, seed=4))
    assert load(other['train_ann']) != load(small_dataset['train_ann'])


def test_image_i_does_not_depend_on_the_split_sizes(small_dataset, tmp_path):
    fewer = generate_muse_scenes(str(tmp_path / 'fewer'), num_train=4, num_val=2, seed=3)
    assert load(fewer['train_ann']) == load(small_dataset['train_ann'])[:4]


def test_records_have_exactly_the_muse_keys(small_dataset):
    records = load(small_dataset['train_ann']) + load(small_dataset['val_ann'])
    base = {'id', 'file_name', 'height', 'width', 'ann_list', 'questions', 'answers'}
    without_text = 0
    encodings = set()
    for r in records:
        assert set(r) in (base, base | {'text_answers'})
        without_text += 'text_answers' not in r
        assert 160 <= r['height'] <= 256 and 160 <= r['width'] <= 256
        assert len(r['questions']) == len(r['answers']) and 1 <= len(r['questions']) <= 3
        assert 2 <= len(r['ann_list']) <= 5
        for k, targets in enumerate(r['answers']):
            assert 1 <= len(targets) <= 3
            if 'text_answers' in r:
                assert r['text_answers'][k].count(SEG_PLACEHOLDER) == len(targets)
            for inst in targets:
                assert set(inst) == {'id', 'image_id', 'category_id', 'category_name',
                                     'rephrased_name', 'segmentation', 'area', 'bbox', 'iscrowd'}
                assert inst['category_name'] in SHAPES
                colour, shape = inst['rephrased_name'].split()
                assert colour in COLOURS and shape == inst['category_name']
        for inst in r['ann_list']:
            segm = inst['segmentation']
            encodings.add('polygon' if isinstance(segm, list) else
                          'rle-list' if isinstance(segm['counts'], list) else 'rle-str')
            # Shapes are large enough to learn: at least 12% of the shorter side across.
            assert max(inst['bbox'][2:]) >= 0.12 * min(r['height'], r['width'])
    assert 0 < without_text < len(records)
    assert encodings == {'polygon', 'rle-list', 'rle-str'}


def test_answers_match_the_pixels(small_dataset):
    """Each target is painted in the colour its name says, and targets never overlap."""
    for key in ('train_ann', 'val_ann'):
        for r in load(small_dataset[key]):
            with Image.open(osp.join(small_dataset['img_dir'], r['file_name'])) as pil:
                img = np.asarray(pil.convert('RGB'))
            assert img.shape[:2] == (r['height'], r['width'])
            masks = [decode_segmentation(a['segmentation'], r['height'], r['width'])
                     for a in r['ann_list']]
            assert int(np.sum(masks, axis=0).max()) == 1
            for inst, mask in zip(r['ann_list'], masks):
                assert mask.sum() == inst['area'] > 0
                colour = np.array(COLOURS[inst['rephrased_name'].split()[0]], dtype=float)
                mean = img[mask].astype(float).mean(axis=0)
                assert np.abs(mean - colour).max() < 16, (r['file_name'], inst['rephrased_name'])
            ids = {a['id'] for a in r['ann_list']}
            for targets in r['answers']:
                assert {t['id'] for t in targets} <= ids


def test_answers_list_their_targets_in_reading_order(small_dataset):
    """An answer's targets, and the names before its {seg}s, go in reading order: by top edge,
    then left edge (from the decoded masks, not the stored bbox)."""
    checked = 0
    for key in ('train_ann', 'val_ann'):
        for r in load(small_dataset[key]):
            for i, targets in enumerate(r['answers']):
                corners = []
                for t in targets:
                    mask = decode_segmentation(t['segmentation'], r['height'], r['width'])
                    rows, cols = np.nonzero(mask)
                    corners.append((int(rows.min()), int(cols.min())))
                assert corners == sorted(corners), (r['file_name'], corners)
                if 'text_answers' in r:
                    text = r['text_answers'][i]
                    where = [text.index(f"{t['rephrased_name']} {SEG_PLACEHOLDER}")
                             for t in targets]
                    assert where == sorted(where), (r['file_name'], text)
                checked += len(targets) > 1
    assert checked >= 10


def test_generated_data_loads_and_runs_through_the_pipeline(small_dataset):
    pipeline = [dict(type='LoadImageFromFile'), dict(type='SampleQuestion'),
                dict(type='DecodeTargetMasks'), dict(type='BuildMuseConversation'),
                dict(type='ExpandSegTokens', text_processor=dict(type='TextProcessor')), dict(type='ResizeLongestSide', size=64),
                dict(type='PackPixelLMInputs')]
    root = small_dataset['root']
    train = MUSEDataset(ann_file='muse_train.json', data_root=root,
                        data_prefix=dict(img_path='images'), pipeline=pipeline)
    val = MUSEDataset(ann_file='muse_val.json', data_root=root,
                      data_prefix=dict(img_path='images'), pipeline=pipeline, test_mode=True)
    assert len(train) == SMALL['num_train']
    assert len(val) == sum(len(r['questions']) for r in load(small_dataset['val_ann']))
    for dataset in (train, val):
        for i in range(len(dataset)):
            sample = dataset[i]['data_samples']
            masks = sample.gt_instances.masks
            assert len(masks) == sample.metainfo['num_targets']
            assert masks.flatten(1).any(1).all()
            assert sample.metainfo['answer'].count('[SEG0]') == len(masks)


def test_complete_output_is_reused(small_dataset):
    before = os.stat(small_dataset['train_ann']).st_mtime_ns
    again = generate_muse_scenes(small_dataset['root'], **SMALL)
    assert again['reused'] and not small_dataset['reused']
    assert os.stat(small_dataset['train_ann']).st_mtime_ns == before


def test_missing_images_are_regenerated(tmp_path):
    out = str(tmp_path / 'd')
    first = generate_muse_scenes(out, num_train=2, num_val=1)
    os.remove(osp.join(first['img_dir'], 'train_000001.png'))
    again = generate_muse_scenes(out, num_train=2, num_val=1)
    assert not again['reused']
    assert osp.isfile(osp.join(first['img_dir'], 'train_000001.png'))


def test_other_arguments_need_overwrite(tmp_path):
    out = str(tmp_path / 'd')
    generate_muse_scenes(out, num_train=2, num_val=1)
    with pytest.raises(FileExistsError, match='overwrite'):
        generate_muse_scenes(out, num_train=3, num_val=1)
    paths = generate_muse_scenes(out, num_train=3, num_val=1, overwrite=True)
    assert not paths['reused'] and len(load(paths['train_ann'])) == 3
    assert sorted(os.listdir(paths['img_dir'])) == ['train_000000.png', 'train_000001.png',
                                                    'train_000002.png', 'val_000000.png']


def test_output_of_an_older_generator_is_replaced(tmp_path):
    out = str(tmp_path / 'd')
    first = generate_muse_scenes(out, num_train=2, num_val=1)
    with open(first['marker']) as f:
        marker = json.load(f)
    with open(first['marker'], 'w') as f:
        json.dump(dict(marker, version=marker['version'] - 1), f)
    with open(first['train_ann'], 'w') as f:
        json.dump([], f)  # what the old generator wrote differs from today's output
    again = generate_muse_scenes(out, num_train=2, num_val=1)
    assert not again['reused'] and len(load(again['train_ann'])) == 2
    assert load(again['marker']) == marker
    # Another version with other arguments is still the user's data: not replaced silently.
    with open(first['marker'], 'w') as f:
        json.dump(dict(marker, version=marker['version'] - 1), f)
    with pytest.raises(FileExistsError, match='overwrite'):
        generate_muse_scenes(out, num_train=3, num_val=1)


def test_interrupted_output_never_looks_complete(tmp_path, monkeypatch):
    out = str(tmp_path / 'd')
    real_write = muse_scenes._write_json_atomic

    def fail_on_val(path, data):
        if path.endswith('muse_val.json'):
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(muse_scenes, '_write_json_atomic', fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        generate_muse_scenes(out, num_train=2, num_val=2)
    assert not osp.exists(osp.join(out, muse_scenes.MARKER_NAME))
    assert not osp.exists(osp.join(out, 'muse_val.json'))
    monkeypatch.setattr(muse_scenes, '_write_json_atomic', real_write)
    paths = generate_muse_scenes(out, num_train=2, num_val=2)
    assert not paths['reused'] and len(load(paths['val_ann'])) == 2


def test_uncompressed_rle_round_trips():
    mask = np.zeros((7, 5), dtype=bool)
    mask[0, 0] = True
    mask[2:6, 1:4] = True
    rle = uncompressed_rle(mask)
    assert rle['size'] == [7, 5] and rle['counts'][0] == 0 and sum(rle['counts']) == 35
    assert np.array_equal(decode_segmentation(rle, 7, 5), mask)


def test_cli_writes_and_reports(tmp_path, capsys):
    import importlib.util
    repo = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    tool = osp.join(repo, 'projects', 'pixellm_tiny_demo', 'tools', 'generate_demo_data.py')
    spec = importlib.util.spec_from_file_location('generate_demo_data', tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = str(tmp_path / 'cli')
    module.main(['--out', out, '--num-train', '3', '--num-val', '2', '--seed', '1'])
    printed = capsys.readouterr().out
    assert 'muse_train.json: 3 images' in printed and 'muse_val.json: 2 images' in printed
    module.main(['--out', out, '--num-train', '3', '--num-val', '2', '--seed', '1'])
    assert 'reused existing' in capsys.readouterr().out


def test_question_kind_names_the_generator_that_wrote_each_question(tmp_path, monkeypatch):
    """Spy on the five question generators while a dataset is written: question_kind gives back
    the kind of the generator that wrote each question, and named_objects the targets' names in
    answer order (a relation's answer then names its anchor)."""
    written = {}
    for kind in QUESTION_KINDS:
        original = getattr(muse_scenes, '_' + kind)

        def spy(*args, _kind=kind, _original=original):
            spec = _original(*args)
            if spec is not None:
                written.setdefault(spec[0], set()).add(_kind)
            return spec

        monkeypatch.setattr(muse_scenes, '_' + kind, spy)
    paths = generate_muse_scenes(str(tmp_path), num_train=60, num_val=0, seed=11)
    kinds = set()
    for r in load(paths['train_ann']):
        for i, question in enumerate(r['questions']):
            kind = question_kind(question)
            assert written[question] == {kind}, question
            kinds.add(kind)
            if 'text_answers' in r:
                names = [tuple(t['rephrased_name'].split()) for t in r['answers'][i]]
                found = named_objects(r['text_answers'][i])
                assert found[:len(names)] == names, r['text_answers'][i]
                assert len(found) == len(names) + (kind == 'relation')
    assert kinds == set(QUESTION_KINDS)


def test_question_kind_refuses_a_question_the_generator_never_writes():
    with pytest.raises(ValueError, match=r"'Is the red circle round\?' is not a question of the "
                       r'synthetic MUSE generator'):
        question_kind('Is the red circle round?')
    # Words of the generator in a template it does not use.
    with pytest.raises(ValueError, match='not a question'):
        question_kind('Segment every red circle.')
    assert named_objects('The Red Circle and the pink star [SEG0].') == [('red', 'circle')]
