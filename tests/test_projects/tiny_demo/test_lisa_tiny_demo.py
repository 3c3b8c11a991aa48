"""The tiny LISA of the demo through tools/train.py and tools/test.py: every part but SAM's prompt
encoder trains (the demo's auxiliary heads too), and the checkpoint is scored by the demo's two
gIoU/cIoU protocols."""
import math
import re

import pytest
import torch
from conftest import run_python

from pixellm.engine import load_checkpoint_safely
from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes

CONFIG = 'projects/pixellm_tiny_demo/configs/lisa_tiny_demo.py'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('muse_lisa')
    generate_muse_scenes(str(root), num_train=8, num_val=2, seed=5, max_size=160)
    return str(root)


def test_tiny_lisa_trains_every_part_and_its_checkpoint_evaluates(data_root, tmp_path):
    work = tmp_path / 'work'
    options = ['--cfg-options', f'train_dataloader.dataset.data_root={data_root}',
               f'test_dataloader.dataset.data_root={data_root}', 'train_dataloader.batch_size=2',
               'test_dataloader.num_workers=0', 'test_dataloader.batch_size=4',
               'model.max_new_tokens=16']
    log = run_python('tools/train.py', CONFIG, '--work-dir', str(work), *options,
              'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=1',
              'default_hooks.logger.interval=1')
    losses = re.findall(r'loss_ce: ([0-9.]+)\s+loss_mask_bce: ([0-9.]+)\s+loss_mask_dice: '
                        r'([0-9.]+)', log)
    assert len(losses) == 2 and all(math.isfinite(float(v)) and float(v) > 0
                                    for step in losses for v in step), losses
    early = load_checkpoint_safely(str(work / 'iter_1.pth'))['state_dict']
    late = load_checkpoint_safely(str(work / 'iter_2.pth'))['state_dict']
    moved = {k.split('.')[0] for k in late if not torch.equal(early[k], late[k])}
    # The demo trains the towers whole (SAM and CLIP), the projector, the LLM and its heads.
    assert {'mask_encoder', 'vision_encoder', 'projector', 'llm', 'pixel_decoder',
            'aux_heads'} <= moved
    prompt = [k for k in late if k.startswith('pixel_decoder.prompt_encoder.')]
    assert prompt and all(torch.equal(early[k], late[k]) for k in prompt)
    sam = [k for k in late if k.startswith('mask_encoder.image_encoder.layers.')]
    assert sam and not [k for k in sam if 'rel_pos' not in k and torch.equal(early[k], late[k])]
    printed = run_python('tools/test.py', CONFIG, str(work / 'iter_2.pth'), '--work-dir', str(work),
                  *options)
    for key in ('gIoU', 'cIoU', 'muse_protocol/gIoU', 'muse_protocol/cIoU'):
        assert re.search(rf'^{re.escape(key)}: [0-9.]+$', printed, re.M), printed[-2000:]
