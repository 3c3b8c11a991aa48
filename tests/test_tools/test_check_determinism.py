"""tools/analysis/check_determinism.py: per-step digests, where two runs part, the verdict."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
from pixellm.engine.hooks import tensor_digest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'analysis', 'check_determinism.py')
DEMO = 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py'

spec = importlib.util.spec_from_file_location('check_determinism', TOOL)
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


def test_tensor_digest_tells_bit_level_changes_dtype_and_shape_apart():
    x = torch.randn(4, 3)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) == tensor_digest(x.t().contiguous().t())  # same values, other strides
    y = x.clone()
    y[2, 1] = torch.nextafter(y[2, 1], torch.tensor(float('inf')))  # one ulp
    assert tensor_digest(x) != tensor_digest(y)
    assert tensor_digest(x) != tensor_digest(x.view(3, 4))
    assert tensor_digest(torch.zeros(2)) != tensor_digest(torch.zeros(2, dtype=torch.float64))


def _write(path, steps, final, threads=(2,)):
    with open(path, 'w') as f:
        for t in threads:
            f.write(json.dumps(dict(numerics=dict(threads=t), start_iter=0)) + '\n')
        for i, (weights, grads) in enumerate(steps, 1):
            f.write(json.dumps(dict(iter=i, weights=weights, grads=grads)) + '\n')
        f.write(json.dumps(dict(final=final)) + '\n')
    return tool.read_digests(str(path))


def test_compare_names_the_first_step_and_tensor_that_differ(tmp_path):
    w, g = dict(a='1', b='2'), dict(a='3', b='4')
    ref = _write(tmp_path / 'ref.jsonl', [(w, g), (w, g)], dict(a='5', b='6'))
    assert ref['threads'] == [2] and sorted(ref['steps']) == [1, 2]
    same = _write(tmp_path / 'same.jsonl', [(w, g), (w, g)], dict(a='5', b='6'), threads=(2, 2))
    assert tool.compare(same, ref) is None
    grads = _write(tmp_path / 'g.jsonl', [(w, g), (w, dict(a='3', b='x'))], dict(a='5', b='6'))
    assert tool.compare(grads, ref) == 'step 2: 1 of 2 gradients differ (first: b)'
    weights = _write(tmp_path / 'w.jsonl', [(w, g), (dict(a='x', b='y'), dict(a='x', b='4'))],
                     dict(a='5', b='6'))
    assert tool.compare(weights, ref) == (
        'step 2: 2 of 2 weights before the update differ (first: a)')
    final = _write(tmp_path / 'f.jsonl', [(w, g), (w, g)], dict(a='5', b='x'))
    assert tool.compare(final, ref) == 'final weights: 1 of 2 differ (first: b)'
    short = _write(tmp_path / 's.jsonl', [(w, g)], dict(a='5', b='6'))
    assert tool.compare(short, ref) == 'step 2: recorded by one run only'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('muse')
    generate_muse_scenes(str(root), num_train=8, num_val=2, seed=5)
    return str(root)


def _check(data_root, work_dir, *args, options=()):
    cmd = [sys.executable, TOOL, DEMO, '--work-dir', str(work_dir), *args, '--cfg-options',
           f'train_dataloader.dataset.data_root={data_root}', 'train_dataloader.batch_size=2',
           'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False', *options]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_resumed_run_is_bit_identical_and_another_thread_count_is_reported(data_root, tmp_path):
    proc = _check(data_root, tmp_path / 'check', '--iters', '2', '--resume-at', '1',
                  '--threads', '2', '1')
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-2000:]
    assert 'threads 2 run 1 (resumed after 1; torch threads [2, 2]): bit-identical' in out
    assert 'threads 1 run 1 (resumed after 1; torch threads [1, 1]): bit-identical' in out
    # The same steps on 1 and on 2 threads: CPU sums split by thread differ in the last bits,
    # from the first backward on, and the tool finds it.
    assert 'threads 1 against threads 2 (expected to differ): differ from step 1:' in out
    digests = tool.read_digests(str(tmp_path / 'check' / 'threads2_run1' / 'grad_digests.jsonl'))
    assert sorted(digests['steps']) == [1, 2] and digests['final']


def test_runs_that_differ_fail_the_check_and_name_the_step(data_root, tmp_path):
    # Without a seed every process initialises the weights differently.
    proc = _check(data_root, tmp_path / 'check', '--iters', '1',
                  options=['randomness.seed=None'])
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'DIFFERS at step 1:' in proc.stdout and 'weights before the update differ' in proc.stdout
    assert 'NOT DETERMINISTIC' in proc.stdout


def test_a_used_work_dir_is_refused_in_one_line(data_root, tmp_path):
    (tmp_path / 'check').mkdir()
    (tmp_path / 'check' / 'old.log').write_text('a previous run')
    proc = _check(data_root, tmp_path / 'check')
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f'error: {tmp_path / "check"}: the work dir is not empty; give a new --work-dir']
