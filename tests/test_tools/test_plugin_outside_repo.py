"""A plugin written outside the repository: its config starts from a shipped one by an absolute
import (``pixellm.configs...``), its mask loss is reached through ``custom_imports`` and trains."""
import os.path as osp
import re
import subprocess
import sys
import textwrap

from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
from pixellm.utils import load_config
from pixellm.utils.config import package_folders

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

FOCAL_LOSS = '''
import torch
import torch.nn.functional as F

from pixellm.registry import MODELS


@MODELS.register_module()
class FocalMaskLoss(torch.nn.Module):
    """Sigmoid focal loss, averaged over the pixels of each target and over targets."""

    def __init__(self, gamma=2.0, loss_weight=2.0, loss_name='loss_focal'):
        super().__init__()
        self.gamma, self.loss_weight, self.loss_name = gamma, loss_weight, loss_name

    def forward(self, pred_logits, gt_masks):
        # One (n_i, H_i, W_i) tensor per question; sizes differ between questions.
        losses = []
        for logits, gt in zip(pred_logits, gt_masks):
            logits, gt = logits.float(), gt.float()
            bce = F.binary_cross_entropy_with_logits(logits, gt, reduction='none')
            p_t = torch.exp(-bce)
            losses.append(((1 - p_t) ** self.gamma * bce).flatten(1).mean(1))
        flat = torch.cat(losses) if losses else pred_logits[0].sum() * 0
        return self.loss_weight * flat.mean()
'''

CONFIG = '''
from mmengine.config import read_base

with read_base():
    from pixellm.configs.pixellm.pixellm_tiny_muse import *  # noqa: F401,F403

custom_imports = dict(imports=['focal_mask_loss'], allow_failed_imports=False)
model.update(loss_mask=dict(type='FocalMaskLoss', gamma=2.0))  # noqa: F405
'''


def _study(tmp_path):
    study = tmp_path / 'my_study'
    study.mkdir()
    (study / 'focal_mask_loss.py').write_text(textwrap.dedent(FOCAL_LOSS))
    (study / 'my_config.py').write_text(textwrap.dedent(CONFIG))
    return study


def test_a_config_outside_the_repository_inherits_a_shipped_one(tmp_path):
    cfg = load_config(str(_study(tmp_path) / 'my_config.py'))
    assert cfg.model.loss_mask.type == 'FocalMaskLoss'
    # Everything else is the shipped config's.
    shipped = load_config(osp.join(REPO, 'configs', 'pixellm', 'pixellm_tiny_muse.py'))
    assert cfg.model.pixel_decoder == shipped.model.pixel_decoder
    assert cfg.train_cfg == shipped.train_cfg


def test_the_plugin_loss_trains_through_tools_train_from_its_own_folder(tmp_path):
    study = _study(tmp_path)
    data = tmp_path / 'data'
    generate_muse_scenes(str(data), num_train=4, num_val=2, seed=2)
    proc = subprocess.run(
        [sys.executable, osp.join(REPO, 'tools', 'train.py'), 'my_config.py', '--work-dir',
         'work', '--cfg-options', f'train_dataloader.dataset.data_root={data}',
         'train_dataloader.batch_size=2', 'train_cfg.max_iters=2',
         'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1'],
        cwd=study, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    logged = re.findall(r'loss_focal: ([0-9.]+)', proc.stdout + proc.stderr)
    assert len(logged) == 2 and all(float(v) > 0 for v in logged)
    assert (study / 'work' / 'iter_2.pth').exists()


def test_the_package_resolver_is_scoped_to_the_load():
    # mmengine looks the package folder up through this module attribute; if upstream renames
    # it, this test (and absolute base imports) fail here first.
    from mmengine.config import config as mmengine_config
    original = mmengine_config.get_installed_path
    with package_folders():
        import pixellm
        assert mmengine_config.get_installed_path('pixellm') == osp.dirname(pixellm.__file__)
    assert mmengine_config.get_installed_path is original
