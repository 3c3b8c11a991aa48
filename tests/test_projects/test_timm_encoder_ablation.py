"""The timm-encoder ablation through tools/train.py and tools/test.py: it trains the SigLIP tower
with the rest of PixelLM, and its checkpoint evaluates."""
import math
import re

import pytest
import torch
from conftest import run_python

from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
from pixellm.engine import load_checkpoint_safely

CONFIG = 'projects/pixellm_ablations/configs/timm_siglip_encoder.py'
TOWER = 'vision_encoder.vision_model.'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('muse_timm')
    generate_muse_scenes(str(root), num_train=8, num_val=2, seed=7)
    return str(root)


def test_timm_ablation_trains_the_tower_and_its_checkpoint_evaluates(data_root, tmp_path):
    work = tmp_path / 'work'
    options = ['--cfg-options', f'train_dataloader.dataset.data_root={data_root}',
               f'test_dataloader.dataset.data_root={data_root}', 'train_dataloader.batch_size=2',
               'test_dataloader.num_workers=0', 'test_dataloader.batch_size=4',
               'model.max_new_tokens=24']
    log = run_python('tools/train.py', CONFIG, '--work-dir', str(work), *options,
              'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=1',
              'default_hooks.logger.interval=1')
    losses = [float(m) for m in re.findall(r'\bloss: ([0-9.]+)', log)]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses), losses
    early = load_checkpoint_safely(str(work / 'iter_1.pth'))['state_dict']
    late = load_checkpoint_safely(str(work / 'iter_2.pth'))['state_dict']
    tower = sorted(k for k in late if k.startswith(TOWER))
    # The timm tower of the config: blocks 1-3 of 4 (layers -2 and -4), no final norm or pool.
    assert f'{TOWER}blocks.2.attn.qkv.weight' in tower and f'{TOWER}pos_embed' in tower
    assert not any(k.startswith((f'{TOWER}blocks.3.', f'{TOWER}norm.', f'{TOWER}attn_pool.'))
                   for k in tower)
    assert late[f'{TOWER}pos_embed'].shape == (1, 64, 64)  # 8x8 patches, no class token
    # frozen=False reached the model: every weight of the tower moved between the checkpoints.
    unmoved = [k for k in tower if torch.equal(early[k], late[k])]
    assert not unmoved, unmoved
    printed = run_python('tools/test.py', CONFIG, str(work / 'iter_2.pth'), '--work-dir', str(work),
                  *options)
    assert re.search(r'^gIoU: [0-9.]+$', printed, re.M), printed[-2000:]
    assert re.search(r'^cIoU: [0-9.]+$', printed, re.M), printed[-2000:]
