"""Allow-listed checkpoint loading under torch >= 2.6 and crash-safe checkpoint writes."""
import io
import os
import os.path as osp
import pickle
import sys
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

import pixellm.engine.checkpoint as ckpt_mod
from pixellm.engine import (AtomicCheckpointHook, UntrustedCheckpointError,
                            allow_checkpoint_globals, atomic_write_bytes, install_mmengine_fixes,
                            load_checkpoint_safely, save_checkpoint_atomic, trusted_checkpoints)

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), 'toy'))
from toy_runner import toy_cfg  # noqa: E402

# These tests build mmengine's Runner directly, so they install what build_runner installs.
install_mmengine_fixes()

SIDE_EFFECTS = []


def record_unpickling(tag):
    """Stands for arbitrary code that a pickle can make the loader run."""
    SIDE_EFFECTS.append(tag)
    return tag


class Foreign:
    """An object mmengine never writes; unpickling it runs :func:`record_unpickling`."""

    def __reduce__(self):
        return (record_unpickling, ('unpickled',))


class Custom:
    """A plain user class for the allow-list test."""

    def __init__(self, value=0):
        self.value = value


def _train(work_dir, max_iters=2, **overrides):
    runner = Runner.from_cfg(toy_cfg(str(work_dir), max_iters=max_iters, **overrides))
    runner.train()
    return runner


@pytest.fixture(scope='module')
def real_checkpoint(tmp_path_factory):
    """A checkpoint written by mmengine's Runner: message hub, optimizer, schedulers, numpy meta."""
    work_dir = tmp_path_factory.mktemp('real_ckpt')
    _train(work_dir, max_iters=2, custom_hooks=[dict(type='RNGStateHook')],
           param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=False, end=2)])
    return osp.join(work_dir, 'iter_2.pth')


def test_plain_torch_load_rejects_mmengine_checkpoint(real_checkpoint):
    # The mmengine 0.10.7 + torch >= 2.6 failure this module exists for.
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
        torch.load(real_checkpoint)
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(real_checkpoint))
    assert {'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr',
            'numpy.ndarray', 'numpy.dtype'} <= unsafe


def test_safe_load_reads_every_part_of_a_real_checkpoint(real_checkpoint):
    ckpt = load_checkpoint_safely(real_checkpoint)
    assert set(ckpt) >= {'meta', 'state_dict', 'message_hub', 'optimizer', 'param_schedulers',
                         'rng_state'}
    loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer) and len(loss.data[0]) == 2
    assert loss.statistics('mean') == pytest.approx(float(np.mean(loss.data[0])))
    meta = ckpt['meta']['dataset_meta']
    assert meta['palette'].dtype == np.uint8 and meta['palette'][1, 0] == 255
    assert meta['scale'] == np.float32(0.5) and isinstance(meta['scale'], np.float32)
    assert ckpt['meta']['iter'] == 2
    assert ckpt['rng_state']['torch'].dtype == torch.uint8
    assert len(ckpt['rng_state']['python'][1]) == 625


def test_mmengine_loaders_go_through_the_safe_loader(real_checkpoint, tmp_path):
    assert CheckpointLoader._get_checkpoint_loader(real_checkpoint) is ckpt_mod._load_from_local
    runner = Runner.from_cfg(toy_cfg(str(tmp_path)))
    ckpt = load_checkpoint(runner.model, real_checkpoint, map_location='cpu')
    for name, value in runner.model.state_dict().items():
        assert torch.equal(value, ckpt['state_dict'][name])


def test_foreign_global_is_refused_with_a_clear_error(tmp_path):
    path = str(tmp_path / 'foreign.pth')
    torch.save({'state_dict': {}, 'extra': Foreign()}, path)
    SIDE_EFFECTS.clear()
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint_safely(path)
    message = str(info.value)
    assert path in message
    assert f'{record_unpickling.__module__}.record_unpickling' in message
    assert info.value.unsafe_globals == [f'{record_unpickling.__module__}.record_unpickling']
    assert '--trust-checkpoint' in message and 'trusted=True' in message
    assert 'allow_checkpoint_globals' in message
    assert info.value.filename == path
    assert SIDE_EFFECTS == []
    # The same refusal comes out of mmengine's own loading path.
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint(torch.nn.Linear(1, 1), path)
    assert SIDE_EFFECTS == []


def test_trusted_loading_unpickles_anything(tmp_path):
    path = str(tmp_path / 'foreign.pth')
    torch.save({'state_dict': {}, 'extra': Foreign()}, path)
    SIDE_EFFECTS.clear()
    load_checkpoint_safely(path, trusted=True)
    assert SIDE_EFFECTS == ['unpickled']
    with trusted_checkpoints():
        load_checkpoint(torch.nn.Linear(1, 1), path)
    assert SIDE_EFFECTS == ['unpickled', 'unpickled']
    # The context manager restores the allow-list.
    with pytest.raises(UntrustedCheckpointError):
        load_checkpoint_safely(path)


def test_custom_class_named_in_error_and_loads_once_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt_mod, '_EXTRA_SAFE_GLOBALS', [])
    path = str(tmp_path / 'custom.pth')
    torch.save({'meta': {'thing': Custom(3)}}, path)
    with pytest.raises(UntrustedCheckpointError) as info:
        load_checkpoint_safely(path)
    assert info.value.unsafe_globals == [f'{Custom.__module__}.Custom']
    allow_checkpoint_globals(Custom)
    assert load_checkpoint_safely(path)['meta']['thing'].value == 3


class _GetattrPayload:
    """Pickles as ``getattr(obj, name)``, the form HistoryBuffer's state uses."""

    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return (getattr, (self.obj, self.name))


@pytest.mark.parametrize('obj,name', [(HistoryBuffer, '__init__'), (np.ndarray, 'tofile'),
                                      (HistoryBuffer, '_statistics_methods')])
def test_getattr_only_reaches_history_buffer_statistics(tmp_path, obj, name):
    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': _GetattrPayload(obj, name)}, path)
    with pytest.raises(UntrustedCheckpointError, match='getattr'):
        load_checkpoint_safely(path)
    ok = str(tmp_path / 'ok.pth')
    torch.save({'x': _GetattrPayload(HistoryBuffer, 'mean')}, ok)
    assert load_checkpoint_safely(ok)['x'] is HistoryBuffer.mean


def test_numpy1_module_names_are_accepted(tmp_path):
    # A checkpoint written under numpy 1.x names numpy.core.multiarray; rewrite one to check.
    path = tmp_path / 'np2.pth'
    torch.save({'score': np.float64(0.25), 'arr': np.arange(3)}, str(path))
    renamed = tmp_path / 'np1.pth'
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(renamed, 'w', zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in data
                data = data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            dst.writestr(item, data)
    ckpt = load_checkpoint_safely(str(renamed))
    assert ckpt['score'] == 0.25 and ckpt['arr'].tolist() == [0, 1, 2]


def test_truncated_and_missing_files_name_the_file(tmp_path):
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.ones(100)}}, str(good))
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(RuntimeError, match='bad.pth.*truncated'):
        load_checkpoint_safely(str(bad))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_checkpoint_safely(str(tmp_path / 'missing.pth'))


def test_atomic_write_leaves_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / 'file.bin'
    atomic_write_bytes(b'old', target)

    def crash(*args):
        raise KeyboardInterrupt('killed before the rename')

    monkeypatch.setattr(ckpt_mod.os, 'replace', crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(b'new' * 1000, target)
    assert target.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['file.bin']
    monkeypatch.undo()
    save_checkpoint_atomic({'w': torch.arange(3)}, target)
    assert load_checkpoint_safely(str(target))['w'].tolist() == [0, 1, 2]


def _partial_torch_save(real_save):
    """torch.save that writes a few bytes of a real checkpoint and then dies."""

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:64])
        raise KeyboardInterrupt('killed while saving')

    return save


def _resume_and_crash(work_dir, monkeypatch, hook_type, crash_at_save=1, **hook_args):
    runner = Runner.from_cfg(
        toy_cfg(str(work_dir), max_iters=3, resume=True,
                default_hooks=dict(checkpoint=dict(type=hook_type, **hook_args))))
    calls = {'n': 0}
    real_save = torch.save
    crashing = _partial_torch_save(real_save)

    def save(obj, f, *args, **kwargs):
        calls['n'] += 1
        if calls['n'] == crash_at_save:
            return crashing(obj, f, *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    monkeypatch.setattr(torch, 'save', real_save)


@pytest.mark.parametrize('crash', ['torch_save', 'before_rename'])
def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, crash):
    hook = dict(interval=1, by_epoch=False, max_keep_ckpts=1)
    _train(tmp_path, max_iters=2, default_hooks=dict(
        checkpoint=dict(type='AtomicCheckpointHook', **hook)))
    previous = osp.join(tmp_path, 'iter_2.pth')
    assert open(tmp_path / 'last_checkpoint').read() == previous
    if crash == 'torch_save':
        _resume_and_crash(tmp_path, monkeypatch, 'AtomicCheckpointHook', **hook)
    else:
        # The checkpoint bytes reach the temporary file, then the process dies before the rename.
        def crash_replace(*args):
            raise KeyboardInterrupt('killed before the rename')

        monkeypatch.setattr(ckpt_mod.os, 'replace', crash_replace)
        runner = Runner.from_cfg(toy_cfg(str(tmp_path), max_iters=3, resume=True,
                                         default_hooks=dict(checkpoint=dict(
                                             type='AtomicCheckpointHook', **hook))))
        with pytest.raises(KeyboardInterrupt):
            runner.train()
        monkeypatch.undo()
    assert load_checkpoint_safely(previous)['meta']['iter'] == 2
    assert open(tmp_path / 'last_checkpoint').read() == previous
    assert not osp.exists(tmp_path / 'iter_3.pth')
    assert not [n for n in os.listdir(tmp_path) if n.startswith(ckpt_mod.TMP_PREFIX)]


def test_mmengine_checkpoint_hook_loses_previous_checkpoint_on_crash(tmp_path, monkeypatch):
    # Why AtomicCheckpointHook exists: mmengine 0.10.7 deletes the outdated checkpoint before
    # writing the new one, so with max_keep_ckpts=1 a crash leaves last_checkpoint dangling.
    hook = dict(interval=1, by_epoch=False, max_keep_ckpts=1)
    _train(tmp_path, max_iters=2, default_hooks=dict(
        checkpoint=dict(type='CheckpointHook', **hook)))
    _resume_and_crash(tmp_path, monkeypatch, 'CheckpointHook', **hook)
    assert open(tmp_path / 'last_checkpoint').read() == osp.join(tmp_path, 'iter_2.pth')
    assert not osp.exists(tmp_path / 'iter_2.pth')


def test_stale_temporary_files_are_removed_and_outdated_pruned(tmp_path):
    stale = tmp_path / f'{ckpt_mod.TMP_PREFIX}iter_9.pth.abc'
    stale.write_bytes(b'partial')
    _train(tmp_path, max_iters=3, default_hooks=dict(
        checkpoint=dict(type='AtomicCheckpointHook', interval=1, by_epoch=False,
                        max_keep_ckpts=2)))
    assert not stale.exists()
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth')) == [
        'iter_2.pth', 'iter_3.pth']
    ckpt = load_checkpoint_safely(str(tmp_path / 'iter_3.pth'))
    assert ckpt['message_hub']['runtime_info']['keep_ckpt_ids'] == [2, 3]


class _ImprovingMetric:
    """Builds an mmengine metric whose value improves on every evaluation."""

    @staticmethod
    def register():
        from mmengine.evaluator import BaseMetric

        from pixellm.registry import METRICS

        @METRICS.register_module(name='EngineImprovingMetric', force=True)
        class EngineImprovingMetric(BaseMetric):
            calls = 0

            def process(self, data_batch, data_samples):
                self.results.append(0)

            def compute_metrics(self, results):
                type(self).calls += 1
                return dict(err=1.0 / type(self).calls)


def test_crash_while_saving_best_keeps_previous_best(tmp_path, monkeypatch):
    _ImprovingMetric.register()
    base = toy_cfg(str(tmp_path))
    val = dict(val_dataloader=base.train_dataloader.to_dict(), val_cfg=dict(type='ValLoop'),
               val_evaluator=dict(type='EngineImprovingMetric'))
    val['val_dataloader']['sampler'] = dict(type='DefaultSampler', shuffle=False)
    hook = dict(interval=1, by_epoch=False, save_best='err', rule='less')
    train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=1)
    _train(tmp_path, max_iters=2, train_cfg=train_cfg, **val,
           default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', **hook)))
    best = tmp_path / 'best_err_iter_2.pth'
    assert best.exists() and not (tmp_path / 'best_err_iter_1.pth').exists()
    # Iteration 3 saves iter_3.pth (1st torch.save), then the new best (2nd): crash there.
    train_cfg['max_iters'] = 3
    runner = Runner.from_cfg(toy_cfg(str(tmp_path), max_iters=3, resume=True,
                                     train_cfg=train_cfg, **val,
                                     default_hooks=dict(checkpoint=dict(
                                         type='AtomicCheckpointHook', **hook))))
    real_save = torch.save
    calls = {'n': 0}

    def save(obj, f, *args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2:
            return _partial_torch_save(real_save)(obj, f, *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save)
    with pytest.raises(KeyboardInterrupt):
        runner.train()
    monkeypatch.undo()
    assert load_checkpoint_safely(str(best))['meta']['iter'] == 2
    assert not (tmp_path / 'best_err_iter_3.pth').exists()


def test_remote_out_dir_keeps_mmengine_backend(tmp_path):
    hook = AtomicCheckpointHook(interval=1, backend_args=dict(backend='local'))
    runner = Runner.from_cfg(toy_cfg(str(tmp_path)))
    hook.before_train(runner)
    assert not hook.atomic
    atomic = AtomicCheckpointHook(interval=1)
    atomic.before_train(runner)
    assert atomic.atomic and atomic.backend_args == dict(backend='pixellm_atomic_local')
    assert type(atomic.file_backend).__name__ == 'AtomicLocalBackend'
