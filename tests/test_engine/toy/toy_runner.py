"""Build in-process runners on the toy plugin for the engine tests."""
import os.path as osp
import sys
import uuid
from typing import Any

from mmengine.config import Config

TOY_DIR = osp.dirname(osp.abspath(__file__))
if TOY_DIR not in sys.path:
    sys.path.insert(0, TOY_DIR)

import pixellm_engine_toy  # noqa: E402,F401  (registers the toy components)


def toy_cfg(work_dir: str, max_iters: int = 4, **overrides: Any) -> Config:
    """An iteration-based toy config (no validation) with ``overrides`` merged on top.

    Args:
        work_dir (str): The runner's work directory.
        max_iters (int): Training iterations. Defaults to 4.
        **overrides: Top-level config keys to set, e.g. ``default_hooks=...``.

    Returns:
        Config: The config, with a unique ``experiment_name`` so runners do not share a
        MessageHub.
    """
    cfg = Config.fromfile(osp.join(TOY_DIR, 'toy_base.py'))
    cfg.work_dir = work_dir
    cfg.experiment_name = f'engine-test-{uuid.uuid4().hex[:8]}'
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10**6)
    cfg.default_hooks = dict(
        checkpoint=dict(type='AtomicCheckpointHook', interval=1, by_epoch=False))
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg.pop(key)
    cfg.merge_from_dict(overrides)
    return cfg
