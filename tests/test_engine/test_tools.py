"""``tools/train.py`` and ``tools/test.py`` on the toy plugin, their config edits, test drawings."""
import argparse
import os.path as osp
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from conftest import load_tool
from mmengine.config import Config
from mmengine.runner import Runner
from mmengine.structures import InstanceData
from PIL import Image

from pixellm.engine import (PixelLMVisualizationHook, UntrustedCheckpointError, apply_amp,
                            apply_resume, apply_seed, apply_work_dir, build_runner,
                            enable_resume_safety, format_metrics, load_checkpoint_safely,
                            save_checkpoint_atomic, set_show_dir)
from pixellm.engine.checkpoint import checkpoint_trust_enabled, set_checkpoint_trust
from pixellm.engine.tool_config import amp_device_available
from pixellm.structures import PixelLMDataSample
from pixellm.visualization import PixelLMVisualizer, mask_colors

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, 'tests', 'test_engine', 'toy')
TOY_ITER = osp.join(TOY, 'toy_iter.py')
METRIC_LINE = re.compile(r'^(mse|count): (\S+)$', re.M)


_tool = load_tool


def _unique_name():
    # In-process runs in the same second would otherwise share mmengine's named singletons
    # (MessageHub, logger, visualizer), which are keyed by "<config>_<timestamp>".
    return f'experiment_name=tools-test-{uuid.uuid4().hex[:8]}'


def _run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_train_then_test_as_subprocesses(tmp_path):
    work_dir = tmp_path / 'work'
    _run('tools/train.py', TOY_ITER, '--work-dir', str(work_dir), '--seed', '7',
         '--cfg-options', 'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=4')
    ckpt = work_dir / 'iter_4.pth'
    assert open(work_dir / 'last_checkpoint').read() == str(ckpt)
    saved = load_checkpoint_safely(str(ckpt))
    assert saved['meta']['seed'] == 7 and saved['meta']['iter'] == 4
    assert 'rng_state' in saved  # tools/train.py added RNGStateHook
    assert "type='pixellm.AtomicCheckpointHook'" in saved['meta']['cfg']

    out = _run('tools/test.py', TOY_ITER, str(ckpt), '--work-dir', str(tmp_path / 'test'))
    block = out[out.index('===== Test metrics of'):]
    metrics = dict(METRIC_LINE.findall(block))
    assert metrics['count'] == '8'
    assert re.fullmatch(r'\d+\.\d{4}', metrics['mse'])
    assert block.rstrip().splitlines()[-1].startswith('=====')


def test_default_work_dir_is_named_after_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config(dict(a=1))
    assert apply_work_dir(cfg, TOY_ITER) == osp.join('work_dirs', 'toy_iter')
    assert apply_work_dir(cfg, TOY_ITER, 'elsewhere') == 'elsewhere'
    cfg = Config(dict(work_dir='from_config'))
    assert apply_work_dir(cfg, TOY_ITER) == 'from_config'


@pytest.fixture()
def trained_checkpoint(tmp_path):
    _tool('train').main([TOY_ITER, '--work-dir', str(tmp_path / 'train'),
                         '--cfg-options', 'train_cfg.max_iters=2',
                         'default_hooks.checkpoint.interval=2', _unique_name()])
    return tmp_path / 'train' / 'iter_2.pth'


def test_test_tool_prints_metrics_and_needs_trust_for_foreign_objects(
        trained_checkpoint, tmp_path, capsys):
    test_main = _tool('test').main
    metrics = test_main([TOY_ITER, str(trained_checkpoint), '--work-dir', str(tmp_path / 't'),
                         '--cfg-options', _unique_name()])
    printed = capsys.readouterr().out
    assert f'mse: {metrics["mse"]:.4f}' in printed and 'count: 8' in printed

    # A checkpoint carrying an object mmengine never writes is refused unless trusted.
    ckpt = load_checkpoint_safely(str(trained_checkpoint))
    ckpt['meta']['extra'] = argparse.Namespace(a=1)
    foreign = tmp_path / 'foreign.pth'
    save_checkpoint_atomic(ckpt, foreign)
    with pytest.raises(SystemExit) as info:
        test_main([TOY_ITER, str(foreign), '--work-dir', str(tmp_path / 't2'),
                   '--cfg-options', _unique_name()])
    assert info.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f'error: {foreign}: refusing to unpickle')
    assert 'argparse.Namespace' in line
    with pytest.raises(UntrustedCheckpointError, match='argparse.Namespace'):
        test_main([TOY_ITER, str(foreign), '--work-dir', str(tmp_path / 't2'), '--debug',
                   '--cfg-options', _unique_name()])
    try:
        trusted = test_main([TOY_ITER, str(foreign), '--work-dir', str(tmp_path / 't3'),
                             '--trust-checkpoint', '--cfg-options', _unique_name()])
    finally:
        set_checkpoint_trust(False)
    assert trusted == metrics
    assert not checkpoint_trust_enabled()


def test_test_tool_show_dir_writes_overlays(trained_checkpoint, tmp_path, capsys):
    image = tmp_path / 'scene.png'
    Image.fromarray(np.full((12, 16, 3), 90, dtype=np.uint8)).save(image)
    vis = tmp_path / 'vis'
    metrics = _tool('test').main([
        TOY_ITER, str(trained_checkpoint), '--work-dir', str(tmp_path / 't'), '--show-dir',
        str(vis), '--cfg-options', f'model.overlay_image={image}', _unique_name()])
    assert metrics['count'] == 8 and 'count: 8' in capsys.readouterr().out
    assert sorted(p.name for p in vis.iterdir()) == [f'scene_q{i}.png' for i in range(8)]
    overlay = np.asarray(Image.open(vis / 'scene_q0.png'))
    assert overlay.shape[1] == 16 and overlay.shape[0] > 12
    assert not np.array_equal(overlay[0, 0], [90, 90, 90])  # column 0 is always in the mask


def test_resume_with_an_explicit_checkpoint_path(trained_checkpoint, tmp_path):
    work_dir = tmp_path / 'resumed'
    _tool('train').main([TOY_ITER, '--work-dir', str(work_dir), '--resume',
                         str(trained_checkpoint), '--cfg-options', 'train_cfg.max_iters=4',
                         'default_hooks.checkpoint.interval=2', _unique_name()])
    assert load_checkpoint_safely(str(work_dir / 'iter_4.pth'))['meta']['iter'] == 4
    # Resumed at 2: the new work dir never saw iteration 2.
    assert not (work_dir / 'iter_2.pth').exists()


def test_apply_resume_and_seed():
    cfg = Config(dict(randomness=dict(seed=1, deterministic=True)))
    apply_resume(cfg, None)
    assert 'resume' not in cfg
    apply_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from is None
    apply_resume(cfg, 'a/iter_4.pth')
    assert cfg.resume is True and cfg.load_from == 'a/iter_4.pth'
    apply_seed(cfg, 5)
    assert cfg.randomness == dict(seed=5, deterministic=True)


def test_enable_resume_safety_upgrades_hooks_once():
    cfg = Config(dict(default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=5,
                                                         max_keep_ckpts=2))))
    notes = enable_resume_safety(cfg)
    assert cfg.default_hooks.checkpoint == dict(type='pixellm.AtomicCheckpointHook', interval=5,
                                                max_keep_ckpts=2)
    assert [h['type'] for h in cfg.custom_hooks] == ['pixellm.RNGStateHook']
    assert len(notes) == 2
    assert enable_resume_safety(cfg) == []
    assert len(cfg.custom_hooks) == 1

    absent = Config(dict())
    enable_resume_safety(absent)
    assert absent.default_hooks.checkpoint == dict(type='pixellm.AtomicCheckpointHook',
                                                   interval=1)
    disabled = Config(dict(default_hooks=dict(checkpoint=None)))
    enable_resume_safety(disabled)
    assert disabled.default_hooks.checkpoint is None
    custom = Config(dict(default_hooks=dict(checkpoint=dict(type='MyCheckpointHook'))))
    assert any('MyCheckpointHook kept' in n for n in enable_resume_safety(custom))


@pytest.mark.skipif(amp_device_available(), reason='checks the CPU-only behaviour')
def test_amp_on_cpu_fails_clearly(tmp_path):
    from mmengine.optim import AmpOptimWrapper

    # The mmengine 0.10.7 fact behind the error: no CPU path in AmpOptimWrapper.
    with pytest.raises(AssertionError, match='only available'):
        AmpOptimWrapper(optimizer=torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1),
                        dtype='bfloat16')
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1))))
    with pytest.raises(RuntimeError, match='--amp needs a CUDA'):
        apply_amp(cfg)
    with pytest.raises(SystemExit, match='does not run on the CPU'):
        _tool('train').main([TOY_ITER, '--work-dir', str(tmp_path), '--amp',
                             '--cfg-options', _unique_name()])


def test_amp_switches_the_optim_wrapper(monkeypatch):
    # The config edit is what is tested; pretend an accelerator exists so it runs on the CPU too.
    import pixellm.engine.tool_config as tool_config
    monkeypatch.setattr(tool_config, 'amp_device_available', lambda: True)
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1))))
    apply_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16' and cfg.optim_wrapper.loss_scale == 'dynamic'
    other = Config(dict(optim_wrapper=dict(type='DeepSpeedOptimWrapper', optimizer=dict())))
    with pytest.raises(ValueError, match='DeepSpeedOptimWrapper'):
        apply_amp(other)


def test_build_runner_honours_runner_type(tmp_path):
    sys.path.insert(0, TOY)
    from toy_runner import toy_cfg

    cfg = toy_cfg(str(tmp_path))
    assert type(build_runner(cfg)) is Runner
    cfg = toy_cfg(str(tmp_path))
    cfg.runner_type = 'Runner'
    assert type(build_runner(cfg)) is Runner


def test_format_metrics_lists_every_metric():
    text = format_metrics({'gIoU': 0.61234, 'cIoU': np.float32(0.5), 'count': 8,
                           'iou': torch.tensor(0.25), 'name': 'x'})
    lines = text.splitlines()
    assert lines[1:-1] == ['gIoU: 0.6123', 'cIoU: 0.5000', 'count: 8', 'iou: 0.2500', 'name: x']
    assert lines[0].startswith('=====') and set(lines[-1]) == {'='}


def test_show_dir_sets_or_adds_the_visualization_hook():
    cfg = Config(dict(custom_hooks=[dict(type='RNGStateHook')]))
    set_show_dir(cfg, '/tmp/vis')
    assert cfg.custom_hooks[-1] == dict(type='pixellm.PixelLMVisualizationHook',
                                        test_out_dir='/tmp/vis')
    cfg = Config(dict(custom_hooks=[dict(type='PixelLMVisualizationHook', interval=5, alpha=0.3)]))
    set_show_dir(cfg, 'b')
    assert cfg.custom_hooks == [dict(type='PixelLMVisualizationHook', interval=5, alpha=0.3,
                                     test_out_dir='b')]


def _sample(img_path, masks, question='Where is the cat?', answer='It is [SEG] here.'):
    sample = PixelLMDataSample(metainfo=dict(img_path=str(img_path), question=question,
                                             pred_text=answer))
    sample.pred_instances = InstanceData(masks=torch.as_tensor(masks),
                                         scores=torch.ones(len(masks)))
    return sample


@pytest.fixture()
def image(tmp_path):
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    path = tmp_path / 'street_01.jpg'
    Image.fromarray(pixels).save(path, quality=100)
    return path


def _test_runner(tmp_path):
    return argparse.Namespace(visualizer=None, model=None, log_dir=str(tmp_path))


def test_visualization_hook_writes_tinted_test_masks_and_text(tmp_path, image):
    masks = np.zeros((2, 20, 30), dtype=bool)
    masks[0, :5, :5] = True
    masks[1, 10:, 20:] = True
    hook = PixelLMVisualizationHook(test_out_dir='vis', alpha=0.5)
    runner = _test_runner(tmp_path)
    hook.before_test(runner)
    assert hook.test_out_dir == str(tmp_path / 'vis')  # relative to the run's log_dir
    hook.after_test_iter(runner, 0, None, [_sample(image, masks), _sample(image, masks[:1])])
    first = np.asarray(Image.open(tmp_path / 'vis' / 'street_01_q0.png'))
    assert (tmp_path / 'vis' / 'street_01_q1.png').exists()
    original = np.asarray(Image.open(image).convert('RGB')).astype(float)
    assert first.shape[1] == 30 and first.shape[0] > 20  # text band below the image
    colors = mask_colors(2)
    for index, (y, x) in enumerate([(2, 2), (15, 25)]):
        expected = np.round(original[y, x] * 0.5 + np.array(colors[index]) * 0.5)
        np.testing.assert_array_equal(first[y, x], expected)
    np.testing.assert_array_equal(first[2, 25], original[2, 25])  # outside every mask
    assert colors[0] != colors[1]
    band = first[20:]
    assert (band.sum(axis=-1) < 100).any()  # dark text was drawn on the white band


def test_visualization_hook_test_interval_max_samples_and_errors(tmp_path, image):
    masks = np.ones((1, 20, 30), dtype=bool)
    hook = PixelLMVisualizationHook(test_out_dir=str(tmp_path / 'vis'), test_interval=2,
                                    max_test_samples=3)
    runner = _test_runner(tmp_path)
    hook.before_test(runner)
    for batch_idx in range(4):
        hook.after_test_iter(runner, batch_idx, None, [_sample(image, masks)] * 2)
    # Batches 1 and 3 are drawn (every second), capped at 3 images.
    assert hook.num_written == 3
    assert sorted(p.name for p in (tmp_path / 'vis').iterdir()) == [
        'street_01_q0.png', 'street_01_q1.png', 'street_01_q2.png']
    # Without test_out_dir the hook draws nothing in test (validation only).
    quiet = PixelLMVisualizationHook()
    quiet.before_test(runner)
    quiet.after_test_iter(runner, 0, None, [_sample(image, masks)])
    assert quiet.num_written == 0

    drawer = PixelLMVisualizer(name=f'test-{uuid.uuid4().hex[:8]}')
    with pytest.raises(ValueError, match='street_01.jpg.*original image resolution'):
        drawer.draw_datasample(_sample(image, np.ones((1, 10, 10), dtype=bool)), draw_gt=False)
    no_text = PixelLMDataSample(metainfo=dict(img_path=str(image), question='q'))
    with pytest.raises(KeyError, match='pred_text'):
        drawer.draw_datasample(no_text)
    empty = drawer.draw_datasample(_sample(image, np.zeros((0, 20, 30), dtype=bool)),
                                   draw_gt=False)
    assert empty.size[0] == 30
    both = drawer.draw_datasample(_sample(image, masks))
    assert both.size[0] == 2 * 30 + 6  # prediction | ground truth


def test_test_drawings_are_named_by_the_question_index_the_pipeline_carries(tmp_path):
    """The MUSE test pipeline's own metainfo names the file, whatever order samples come in."""
    from mmengine.registry import init_default_scope

    from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
    from pixellm.registry import DATASETS
    from pixellm.utils import load_config
    init_default_scope('pixellm')
    generate_muse_scenes(str(tmp_path / 'data'), num_train=2, num_val=2, seed=1, min_size=64,
                         max_size=96)
    cfg = load_config(osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py'))
    cfg.test_dataloader.dataset.data_root = str(tmp_path / 'data')
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    samples = [dataset[i]['data_samples'] for i in range(len(dataset))]
    assert any(s.metainfo['question_index'] > 0 for s in samples)
    hook = PixelLMVisualizationHook(test_out_dir=str(tmp_path / 'vis'))
    runner = _test_runner(tmp_path)
    hook.before_test(runner)
    expected = []
    # Only later questions of each image, as one rank of a distributed test may see them.
    for sample in [s for s in samples if s.metainfo['question_index'] > 0]:
        h, w = sample.metainfo['ori_shape']
        sample.set_metainfo(dict(pred_text='It is here.'))
        sample.pred_instances = InstanceData(masks=torch.zeros(0, h, w, dtype=torch.bool))
        hook.after_test_iter(runner, 0, None, [sample])
        stem = osp.splitext(osp.basename(sample.metainfo['img_path']))[0]
        expected.append(f'{stem}_q{sample.metainfo["question_index"]}.png')
    assert sorted(p.name for p in (tmp_path / 'vis').iterdir()) == sorted(expected)
