"""``pip install .`` (not editable): the configs travel with the package, so ``--deepspeed zero2``
and a config that starts from a shipped one work from a folder outside the source tree."""
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, 'tests', 'test_engine', 'toy')

# Runs the repository's tools/train.py on the installed package: pixellm is imported (from
# PYTHONPATH) before the tool puts the checkout on sys.path, so every pixellm module comes from
# the installed copy.
LAUNCH = '''
import runpy
import sys

import pixellm

assert pixellm.__file__.startswith({site!r}), pixellm.__file__
sys.argv = ['train.py', *sys.argv[1:]]
runpy.run_path({train!r}, run_name='__main__')
'''


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp('install')
    source, site = root / 'source', root / 'site'
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        '.venv', '.git', '.whl', 'work_dirs', 'data', '__pycache__', '*.egg-info', 'build',
        '.pytest_cache', 'tests'))
    proc = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps',
                           '--no-build-isolation', '--target', str(site), str(source)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return site


def test_the_installed_package_holds_the_configs(installed):
    package = installed / 'pixellm'
    for name in ('zero2.json', 'zero2_offload.json', 'zero3.json'):
        assert (package / 'configs' / 'deepspeed' / name).is_file()
    assert (package / 'configs' / 'pixellm' / 'pixellm_7b_lora_8xb2_ga10_5k_mix.py').is_file()
    assert (package / 'configs' / '_base_' / 'models' / 'pixellm_7b.py').is_file()
    assert not (package / 'configs').is_symlink()


def test_deepspeed_zero2_trains_from_a_folder_outside_the_source_tree(installed, tmp_path):
    study = tmp_path / 'study'
    study.mkdir()
    for name in ('toy_base.py', 'toy_dist.py', 'pixellm_engine_toy.py', 'pixellm_dist_toy.py'):
        shutil.copy(osp.join(TOY, name), study / name)
    (study / 'launch.py').write_text(textwrap.dedent(LAUNCH.format(
        site=str(installed), train=osp.join(REPO, 'tools', 'train.py'))))
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(installed), CUDA_VISIBLE_DEVICES='',
               DS_ACCELERATOR='cpu', OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '1',
         '--master_port', str(port), 'launch.py', 'toy_dist.py', '--work-dir', 'work',
         '--launcher', 'pytorch', '--deepspeed', 'zero2', '--cfg-options', 'log_level=INFO'],
        cwd=study, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # The run's log names the DeepSpeed config it used: the installed package's.
    log = ''.join(path.read_text() for path in (study / 'work').glob('*/*.log'))
    assert osp.join(str(installed), 'pixellm', 'configs', 'deepspeed', 'zero2.json') in log
    assert 'ZeRO stage 2' in log
    assert (study / 'work' / 'iter_4.pth').exists()
