"""tools/misc/browse_dataset.py, tools/misc/print_config.py and
tools/analysis/trivial_baselines.py on the demo config."""
import json
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from projects.pixellm_tiny_demo.pixellm_tiny_demo.muse_scenes import generate_muse_scenes
from pixellm.datasets.transforms.loading import decode_segmentation
from pixellm.visualization import mask_colors
from tools.misc import browse_dataset, print_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CFG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('scenes'))
    generate_muse_scenes(root, num_train=4, num_val=2, seed=3)
    return root


def _options(root):
    return ['--cfg-options', f'train_dataloader.dataset.data_root={root}/',
            f'test_dataloader.dataset.data_root={root}/']


def test_browse_writes_overlays_with_numbered_targets(scenes, tmp_path, capsys):
    out = str(tmp_path / 'browse')
    browse_dataset.main([DEMO_CFG, '--split', 'test', '--num', '3', '--output-dir', out,
                         *_options(scenes)])
    printed = capsys.readouterr().out
    pngs = sorted(os.listdir(out))
    assert len(pngs) == 3 and 'wrote 3 overlay(s)' in printed
    # Test split item 0 is question 0 of the first val record.
    record = json.load(open(osp.join(scenes, 'muse_val.json')))[0]
    targets = record['answers'][0]
    line = next(l for l in printed.splitlines() if l.startswith(osp.join(out, pngs[0])))
    assert f'{len(targets)} target(s)' in line and record['questions'][0] in line
    assert '[SEG' not in line
    assert all(f'[{k}]' in line for k in range(1, len(targets) + 1))
    img = np.asarray(Image.open(osp.join(scenes, 'images', record['file_name'])).convert('RGB'))
    png = np.asarray(Image.open(osp.join(out, pngs[0])).convert('RGB')).astype(np.float32)
    # The overlay keeps the image's width and adds a text band below it.
    assert png.shape[1] == img.shape[1] and png.shape[0] > img.shape[0]
    masks = [decode_segmentation(t['segmentation'], record['height'], record['width'])
             for t in targets]
    for mask, color in zip(masks, mask_colors(len(masks))):
        expected = np.round(img[mask] * 0.5 + np.asarray(color, np.float32) * 0.5)
        assert np.abs(png[:img.shape[0]][mask] - expected).max() <= 1
    outside = ~np.any(masks, axis=0)
    assert np.array_equal(png[:img.shape[0]][outside], img[outside])


def test_browse_reports_a_missing_image(scenes, tmp_path, capsys):
    broken = tmp_path / 'broken'
    os.makedirs(broken / 'images')
    for name in ('muse_train.json', 'muse_val.json'):
        os.symlink(osp.join(scenes, name), broken / name)
    records = json.load(open(osp.join(scenes, 'muse_train.json')))
    for r in records[1:]:
        os.symlink(osp.join(scenes, 'images', r['file_name']), broken / 'images' / r['file_name'])
    with pytest.raises(SystemExit, match=f"sample 0: .*{records[0]['file_name']}"):
        browse_dataset.main([DEMO_CFG, '--num', '2', '--output-dir', str(tmp_path / 'o'),
                             *_options(str(broken))])
    browse_dataset.main([DEMO_CFG, '--num', '2', '--keep-going', '--output-dir',
                         str(tmp_path / 'k'), *_options(str(broken))])
    printed = capsys.readouterr().out
    assert 'skipped sample 0' in printed and len(os.listdir(tmp_path / 'k')) == 1


def test_browse_names_a_missing_dataloader():
    with pytest.raises(SystemExit, match='no val_dataloader.dataset'):
        browse_dataset.main([DEMO_CFG, '--split', 'val'])


def test_print_config_applies_options_and_saves(tmp_path, capsys):
    saved = str(tmp_path / 'cfg.py')
    print_config.main([DEMO_CFG, '--cfg-options', 'train_cfg.max_iters=7', '--save', saved])
    printed = capsys.readouterr().out
    assert "train_cfg = dict(max_iters=7, type='IterBasedTrainLoop')" in printed
    assert "type='PixelLM'" in printed
    from mmengine.config import Config
    assert Config.fromfile(saved).train_cfg.max_iters == 7
    with pytest.raises(SystemExit, match='not found'):
        print_config.main([str(tmp_path / 'nope.py')])


def test_trivial_baselines_score_with_every_metric_of_the_config(scenes):
    from pixellm.utils.config import load_config

    from tools.analysis.trivial_baselines import evaluate_baselines
    cfg = load_config(DEMO_CFG)
    dataset = dict(cfg.test_dataloader.dataset, data_root=scenes + '/')
    results = evaluate_baselines(dataset, cfg.test_evaluator)
    assert set(results) == {'empty', 'full', 'union_of_objects'}
    # Independently: every target lies inside the union of all objects, so its IoU with that
    # union is its area over the union's area, and its IoU with the full image is its share of it.
    union_ious, full_ious = [], []
    for record in json.load(open(osp.join(scenes, 'muse_val.json'))):
        h, w = record['height'], record['width']
        union = np.zeros((h, w), bool)
        for ann in record['ann_list']:
            union |= decode_segmentation(ann['segmentation'], h, w).astype(bool)
        for answer in record['answers']:
            for target in answer:
                area = decode_segmentation(target['segmentation'], h, w).astype(bool).sum()
                union_ious.append(area / union.sum())
                full_ious.append(area / (h * w))
    for prefix in ('', 'muse_protocol/'):  # the demo config's two metrics, the second prefixed
        assert results['union_of_objects'][prefix + 'gIoU'] == pytest.approx(np.mean(union_ious))
        assert results['full'][prefix + 'gIoU'] == pytest.approx(np.mean(full_ious))
        assert results['empty'][prefix + 'gIoU'] == 0.0
        assert results['union_of_objects'][prefix + 'num_targets'] == len(union_ious)
    # One metric config (not a list) still works, without prefixes.
    single = evaluate_baselines(dataset, dict(type='ReasonSegMetric'))
    assert 'muse_protocol/gIoU' not in single['full']
    assert single['full']['gIoU'] == pytest.approx(np.mean(full_ious))
    with pytest.raises(ValueError, match='different prefixes'):
        evaluate_baselines(dataset, [dict(type='ReasonSegMetric')] * 2)
