"""The real tiny PixelLM through tools/train.py and tools/test.py: metrics, overlays, resume, plugin."""
import json
import os.path as osp
import re

import numpy as np
import pytest
import torch
from conftest import run_python
from pycocotools import mask as mask_utils

from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
from pixellm.engine import load_checkpoint_safely

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py'
PLUGIN = 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo_dotdecoder.py'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('muse')
    generate_muse_scenes(str(root), num_train=12, num_val=4, seed=3)
    return str(root)


def overrides(data_root, iters, extra=()):
    return ['--cfg-options',
            f'train_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'test_dataloader.num_workers=0',
            'test_dataloader.batch_size=4', f'train_cfg.max_iters={iters}',
            f'default_hooks.checkpoint.interval={iters}', 'default_hooks.logger.interval=1',
            *extra]


def test_train_then_test_prints_both_metrics_and_writes_overlays(data_root, tmp_path):
    work = tmp_path / 'work'
    run_python('tools/train.py', DEMO, '--work-dir', str(work), *overrides(data_root, 3))
    ckpt = work / 'iter_3.pth'
    assert open(work / 'last_checkpoint').read().strip() == str(ckpt)
    out_json, show = tmp_path / 'metrics.json', tmp_path / 'overlays'
    dump = tmp_path / 'dump' / 'predictions.json'
    printed = run_python('tools/test.py', DEMO, str(ckpt), '--work-dir', str(work), '--out',
                  str(out_json), '--show-dir', str(show), '--dump', str(dump),
                  *overrides(data_root, 3))
    giou = re.search(r'^gIoU: ([0-9.]+)$', printed, re.M)
    ciou = re.search(r'^cIoU: ([0-9.]+)$', printed, re.M)
    assert giou and ciou, printed[-2000:]
    metrics = json.load(open(out_json))
    assert metrics['gIoU'] == pytest.approx(float(giou.group(1)), abs=1e-4)
    val = json.load(open(osp.join(data_root, 'muse_val.json')))
    num_questions = sum(len(r['questions']) for r in val)
    assert metrics['num_samples'] == num_questions
    assert len(list(show.glob('*.png'))) == num_questions
    # The dump holds every question once, and its masks score what the metric printed.
    items = json.load(open(dump))
    records = {r['file_name']: r for r in val}
    assert sorted((osp.basename(i['img_path']), i['question_index']) for i in items) == sorted(
        (r['file_name'], q) for r in val for q in range(len(r['questions'])))
    intersections, unions = [], []
    for item in items:
        record = records[osp.basename(item['img_path'])]
        assert item['question'] == record['questions'][item['question_index']]
        assert item['answer'].count('[') == len(item['targets'])
        h, w = record['height'], record['width']
        preds = [mask_utils.decode(dict(size=t['segmentation']['size'],
                                        counts=t['segmentation']['counts'].encode()))
                 for t in item['targets']]
        assert all(p.shape == (h, w) for p in preds)
        for k, ann in enumerate(record['answers'][item['question_index']]):
            segm = ann['segmentation']
            if isinstance(segm, list):  # polygons
                rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
            elif isinstance(segm['counts'], str):  # compressed RLE
                rle = dict(size=segm['size'], counts=segm['counts'].encode())
            else:  # uncompressed RLE
                rle = mask_utils.frPyObjects(segm, h, w)
            gt = mask_utils.decode(rle).astype(bool)
            pred = preds[k].astype(bool) if k < len(preds) else np.zeros_like(gt)
            intersections.append((gt & pred).sum())
            unions.append((gt | pred).sum())
    ious = [i / u if u else 1.0 for i, u in zip(intersections, unions)]
    assert float(np.mean(ious)) == pytest.approx(float(giou.group(1)), abs=1e-4)
    assert sum(intersections) / sum(unions) == pytest.approx(float(ciou.group(1)), abs=1e-4)


def test_killed_and_resumed_training_ends_bit_equal(data_root, tmp_path):
    full, part = tmp_path / 'full', tmp_path / 'part'
    # Bit-equality holds for one intra-op thread count: CPU sums split by thread (see
    # tools/analysis/check_determinism.py), so the three processes are given the same count.
    run_python('tools/train.py', DEMO, '--work-dir', str(full), *overrides(data_root, 4), threads=2)
    # The interrupted run stops after iteration 2 (its last checkpoint), then resumes to 4.
    run_python('tools/train.py', DEMO, '--work-dir', str(part),
        *overrides(data_root, 4, ['train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2']),
        threads=2)
    run_python('tools/train.py', DEMO, '--work-dir', str(part), '--resume', str(part / 'iter_2.pth'),
        *overrides(data_root, 4), threads=2)
    a = load_checkpoint_safely(str(full / 'iter_4.pth'))['state_dict']
    b = load_checkpoint_safely(str(part / 'iter_4.pth'))['state_dict']
    assert a.keys() == b.keys()
    differ = {key: (a[key] - b[key]).abs().max().item() for key in a
              if not torch.equal(a[key], b[key])}
    assert not differ, (f'{len(differ)} of {len(a)} weights differ after the resume; largest '
                        f'differences: {sorted(differ.items(), key=lambda kv: -kv[1])[:5]}')
    start = load_checkpoint_safely(str(part / 'iter_2.pth'))['state_dict']
    changed = sum(not torch.equal(start[k], a[k]) for k in a)
    assert changed > 0  # training did move the weights between the two checkpoints
    # Resuming on another thread count cannot be bit-equal, and the log says why.
    printed = run_python('tools/train.py', DEMO, '--work-dir', str(tmp_path / 'other'), '--resume',
                  str(part / 'iter_2.pth'), *overrides(data_root, 3), threads=1)
    assert 'the checkpoint was written with other numerics settings (threads 2 -> 1)' in printed


def test_plugin_decoder_reaches_the_model_through_custom_imports(data_root, tmp_path):
    work = tmp_path / 'plugin'
    run_python('tools/train.py', PLUGIN, '--work-dir', str(work), *overrides(data_root, 2))
    state = load_checkpoint_safely(str(work / 'iter_2.pth'))['state_dict']
    assert 'pixel_decoder.pixel_head.0.weight' in state
    # In-process: the same config loads the plugin and builds its decoder.
    from pixellm.registry import MODELS
    from pixellm.utils import load_config
    cfg = load_config(osp.join(REPO, PLUGIN))
    assert type(MODELS.build(cfg.model).pixel_decoder).__name__ == 'DotProductPixelDecoder'
