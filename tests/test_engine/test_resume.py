"""A run killed mid-training and resumed with ``--resume`` ends bit-equal to an unbroken one."""
import importlib.util
import os.path as osp
import random
import signal
import subprocess
import sys
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pixellm.engine import (RNGStateHook, capture_rng_state, load_checkpoint_safely,
                            restore_rng_state, save_checkpoint_atomic)
from pixellm.engine.hooks.rng_state_hook import _RestoreAfterSkip

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, 'tests', 'test_engine', 'toy')
TRAIN = osp.join(REPO, 'tools', 'train.py')


def _train(config, work_dir, *extra):
    """Start ``tools/train.py`` in a new process without waiting for it."""
    cmd = [sys.executable, TRAIN, osp.join(TOY, config), '--work-dir', str(work_dir), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _train_here(config, work_dir, *extra):
    """Run ``tools/train.py``'s main in this process, while a subprocess runs on another core.

    Used for the uninterrupted reference runs (the crash and the resume, which must be separate
    processes, always run as subprocesses).
    """
    spec = importlib.util.spec_from_file_location('pixellm_tools_train', TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # A unique experiment name keeps mmengine's named singletons (MessageHub, logger) apart from
    # other in-process runs started in the same second.
    name = f'experiment_name=resume-test-{uuid.uuid4().hex[:8]}'
    if '--cfg-options' in extra:
        extra = (*extra, name)
    else:
        extra = (*extra, '--cfg-options', name)
    module.main([osp.join(TOY, config), '--work-dir', str(work_dir), *extra])


def _finish(proc, expect_rc=0):
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == expect_rc, out[-3000:]
    return out


def _assert_same_training_state(a, b):
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    state_a = a['optimizer']['state']
    state_b = b['optimizer']['state']
    for index in state_a:
        for name, value in state_a[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(state_b[index][name]))
    assert a['param_schedulers'] == b['param_schedulers']


def _weights_differ(a, b):
    return any(not torch.equal(v, b['state_dict'][k]) for k, v in a['state_dict'].items())


@pytest.mark.parametrize('num_workers', [0, 2])
def test_iter_based_resume_after_kill_is_bit_equal(tmp_path, num_workers):
    full_dir, crash_dir, control_dir = (tmp_path / n for n in ('full', 'crash', 'control'))
    workers = f'train_dataloader.num_workers={num_workers}'
    # Killed (SIGKILL) after iteration 5; the last checkpoint is iter_4 (interval 2), and the
    # validation at iteration 4 ran between that checkpoint and the kill.
    crash = _train('toy_iter.py', crash_dir, '--cfg-options', 'custom_hooks.0.after_iter=5',
                   workers)
    _train_here('toy_iter.py', full_dir, '--cfg-options', workers)
    _finish(crash, expect_rc=-signal.SIGKILL)
    assert open(crash_dir / 'last_checkpoint').read() == osp.join(crash_dir, 'iter_4.pth')
    assert not (crash_dir / 'iter_6.pth').exists()

    # Control: the same resume from a checkpoint without the random state must diverge,
    # which shows that the comparison below is sensitive to it.
    stripped = load_checkpoint_safely(str(crash_dir / 'iter_4.pth'))
    del stripped['rng_state']
    save_checkpoint_atomic(stripped, control_dir / 'iter_4.pth')
    resumed = _train('toy_iter.py', crash_dir, '--resume', '--cfg-options', workers)
    _train_here('toy_iter.py', control_dir, '--resume', str(control_dir / 'iter_4.pth'),
                '--cfg-options', workers)
    out = _finish(resumed)
    assert 'Advance dataloader 4 steps' in out

    reference = load_checkpoint_safely(str(full_dir / 'iter_8.pth'))
    result = load_checkpoint_safely(str(crash_dir / 'iter_8.pth'))
    assert result['meta']['iter'] == 8
    _assert_same_training_state(reference, result)
    assert _weights_differ(reference, load_checkpoint_safely(str(control_dir / 'iter_8.pth')))


def test_epoch_based_resume_after_kill_is_bit_equal(tmp_path):
    full_dir, crash_dir = tmp_path / 'full', tmp_path / 'crash'
    crash = _train('toy_epoch.py', crash_dir, '--cfg-options', 'custom_hooks.0.after_epoch=2')
    _train_here('toy_epoch.py', full_dir)
    _finish(crash, expect_rc=-signal.SIGKILL)
    assert open(crash_dir / 'last_checkpoint').read() == osp.join(crash_dir, 'epoch_2.pth')
    _finish(_train('toy_epoch.py', crash_dir, '--resume'))
    reference = load_checkpoint_safely(str(full_dir / 'epoch_4.pth'))
    result = load_checkpoint_safely(str(crash_dir / 'epoch_4.pth'))
    assert result['meta']['epoch'] == 4
    _assert_same_training_state(reference, result)


def _draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist())


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    state = capture_rng_state()
    expected = _draws()
    save_checkpoint_atomic({'rng_state': state}, tmp_path / 'rng.pth')
    _draws()
    restore_rng_state(load_checkpoint_safely(str(tmp_path / 'rng.pth'))['rng_state'])
    assert _draws() == expected


class _Loop:
    """Stands for IterBasedTrainLoop: an iterator that draws a random number per batch."""

    def __init__(self, iteration):
        self.iter = iteration
        self.dataloader_iterator = iter(self._batches())

    @staticmethod
    def _batches():
        index = 0
        while True:
            yield index, torch.rand(1).item()
            index += 1


def _fake_runner(iteration, loop):
    logs = []
    logger = SimpleNamespace(info=logs.append, warning=logs.append)
    return SimpleNamespace(iter=iteration, epoch=0, train_loop=loop, logger=logger,
                           cfg={}, logs=logs)


def test_iter_resume_restores_after_the_skip_and_before_the_next_batch():
    torch.manual_seed(1)
    saved = capture_rng_state()
    expected_draw = torch.rand(1).item()  # what batch 3 draws in the uninterrupted run
    torch.manual_seed(123)  # the resumed process starts from some other state
    loop = _Loop(3)
    runner = _fake_runner(3, loop)
    hook = RNGStateHook()
    hook.after_load_checkpoint(runner, {'rng_state': saved, 'meta': {'iter': 3}})
    hook.before_train_epoch(runner)
    assert isinstance(loop.dataloader_iterator, _RestoreAfterSkip)
    skipped = [next(loop.dataloader_iterator)[0] for _ in range(3)]
    index, draw = next(loop.dataloader_iterator)
    assert skipped == [0, 1, 2] and index == 3
    assert draw == expected_draw
    # The wrapper removes itself once the state is restored.
    assert not isinstance(loop.dataloader_iterator, _RestoreAfterSkip)


def test_load_from_does_not_restore_random_state():
    torch.manual_seed(1)
    saved = capture_rng_state()
    torch.manual_seed(5)
    expected = torch.get_rng_state()
    loop = _Loop(0)
    runner = _fake_runner(0, loop)  # load_from: the loop starts at iteration 0
    hook = RNGStateHook()
    hook.after_load_checkpoint(runner, {'rng_state': saved, 'meta': {'iter': 7}})
    hook.before_train_epoch(runner)
    assert not isinstance(loop.dataloader_iterator, _RestoreAfterSkip)
    assert torch.equal(torch.get_rng_state(), expected)


def test_checkpoint_without_random_state_warns():
    runner = _fake_runner(4, _Loop(4))
    RNGStateHook().after_load_checkpoint(runner, {'meta': {'iter': 4}})
    assert any('no random state' in line for line in runner.logs)


def test_validation_does_not_change_training_random_stream():
    hook = RNGStateHook()
    runner = _fake_runner(0, _Loop(0))
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    hook.before_val(runner)
    torch.rand(100)  # validation draws
    checkpoint = {}
    hook.before_save_checkpoint(runner, checkpoint)  # a best checkpoint saved during validation
    hook.after_val(runner)
    assert torch.equal(torch.rand(2), expected)
    restore_rng_state(checkpoint['rng_state'])
    assert torch.equal(torch.rand(2), expected)


@pytest.mark.parametrize('mid_epoch', [False, True])
def test_epoch_resume_restores_in_before_train_epoch(mid_epoch):
    torch.manual_seed(1)
    saved = capture_rng_state()
    expected = torch.rand(1)
    torch.manual_seed(9)
    iteration = 7 if mid_epoch else 8
    loop = SimpleNamespace(dataloader=[0] * 4)  # 4 batches per epoch, no dataloader_iterator
    runner = _fake_runner(iteration, loop)
    runner.epoch = 2
    hook = RNGStateHook()
    hook.after_load_checkpoint(runner, {'rng_state': saved, 'meta': {'iter': iteration}})
    hook.before_train_epoch(runner)
    assert torch.equal(torch.rand(1), expected)
    assert any('restarts that epoch' in line for line in runner.logs) == mid_epoch


def test_resume_under_another_thread_count_warns_and_names_both_counts():
    checkpoint = {}
    RNGStateHook().before_save_checkpoint(_fake_runner(4, _Loop(4)), checkpoint)
    assert checkpoint['rng_state']['numerics']['threads'] == torch.get_num_threads()
    same = _fake_runner(4, _Loop(4))
    RNGStateHook().after_load_checkpoint(same, dict(checkpoint, meta={'iter': 4}))
    assert same.logs == []
    threads = torch.get_num_threads()
    checkpoint['rng_state']['numerics']['threads'] = threads + 3
    other = _fake_runner(4, _Loop(4))
    RNGStateHook().after_load_checkpoint(other, dict(checkpoint, meta={'iter': 4}))
    assert len(other.logs) == 1
    assert f'threads {threads + 3} -> {threads}' in other.logs[0]
    assert 'not be bit-equal' in other.logs[0]
