"""PixelLMVisualizationHook in validation: prediction | ground truth through PixelLMVisualizer."""
import copy
import os
import os.path as osp

import numpy as np
from PIL import Image

from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
from pixellm.engine.runner_build import build_runner
from pixellm.engine.tool_config import drop_unavailable_vis_backends
from pixellm.utils import load_config, register_all_modules
from pixellm.visualization import render_mask_overlay

from conftest import REPO

DEMO = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')


def test_hook_writes_fixed_val_samples_with_prediction_and_truth(tmp_path):
    register_all_modules()
    data_root = str(tmp_path / 'data')
    generate_muse_scenes(data_root, num_train=8, num_val=3, seed=11, max_size=160)
    cfg = load_config(DEMO)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = data_root
    val_loader = copy.deepcopy(cfg.test_dataloader)
    val_loader.update(batch_size=1, num_workers=0)
    val_loader.dataset.data_root = data_root
    cfg.val_dataloader = val_loader
    cfg.test_dataloader.dataset.data_root = data_root
    cfg.val_evaluator = dict(type='ReasonSegMetric')
    cfg.val_cfg = dict(type='ValLoop')
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 100
    cfg.custom_hooks = [dict(type='PixelLMVisualizationHook', interval=2, max_samples=2)]
    cfg.visualizer = dict(type='PixelLMVisualizer', vis_backends=[
        dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])
    runner = build_runner(cfg)
    runner.train()

    dataset = runner.val_dataloader.dataset
    folder = osp.join(runner.log_dir, 'vis_data', 'vis_image')
    for index in (0, 2):  # batches 0 and 2 (interval 2, batch size 1), at most 2 images
        sample = dataset[index]['data_samples']
        meta = sample.metainfo
        stem = osp.splitext(osp.basename(meta['img_path']))[0]
        path = osp.join(folder, f'val_{stem}_q{meta["question_index"]}_2.png')
        drawn = np.asarray(Image.open(path).convert('RGB'))
        image = Image.open(meta['img_path'])
        truth = np.asarray(render_mask_overlay(
            image, sample.gt_instances.masks.numpy(), f'{meta["question"]} (ground truth)',
            meta['answer'].replace('{seg}', '[*]')))
        # Right half: the ground truth, drawn independently here.
        right = drawn[:truth.shape[0], image.width + 6:]
        assert right.shape == truth.shape and np.array_equal(right, truth)
        # Left half: the prediction, an overlay of the same image.
        assert drawn.shape[1] == 2 * image.width + 6
    assert len(os.listdir(folder)) == 2
    # TensorBoard (installed with the tests extra) got the same images.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(osp.join(runner.log_dir, 'vis_data'),
                              size_guidance={'images': 0})
    events.Reload()
    expected = sorted(osp.splitext(name)[0].rsplit('_', 1)[0] for name in os.listdir(folder))
    assert sorted(events.Tags()['images']) == expected
    for tag in expected:
        (image, ) = events.Images(tag)
        assert image.step == 2
        local = Image.open(osp.join(folder, f'{tag}_2.png'))
        assert (image.width, image.height) == local.size


def test_tensorboard_backend_is_left_out_when_tensorboard_is_missing(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'tensorboard' else real(name, *a))
    from mmengine.config import Config
    cfg = Config(dict(visualizer=dict(type='Visualizer', vis_backends=[
        dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')])))
    notes = drop_unavailable_vis_backends(cfg)
    assert [b['type'] for b in cfg.visualizer.vis_backends] == ['LocalVisBackend']
    assert len(notes) == 1 and 'pip install tensorboard' in notes[0]
    monkeypatch.setattr(importlib.util, 'find_spec', real)
    cfg = Config(dict(visualizer=dict(type='Visualizer', vis_backends=[
        dict(type='LocalVisBackend')])))
    assert drop_unavailable_vis_backends(cfg) == []
