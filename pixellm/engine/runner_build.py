"""Build the runner a config names (``Runner`` or ``FlexibleRunner``) and print its metrics."""
import os.path as osp
from numbers import Number
from typing import Any, Dict

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import build_runner_from_cfg
from mmengine.runner import Runner

from pixellm.registry import RUNNERS
from .distributed import prepare_cpu_distributed
from .mmengine_fixes import install_mmengine_fixes
from .tool_config import drop_unavailable_vis_backends


def build_runner(cfg: Config, records_in_log_dir: bool = False) -> Runner:
    """``Runner.from_cfg``, or the runner class named by ``cfg.runner_type``.

    A distributed launch on a machine without CUDA is prepared first (see
    :func:`prepare_cpu_distributed`).

    Args:
        cfg (Config): The full config (edited in place by :func:`prepare_cpu_distributed`).
        records_in_log_dir (bool): Dump the config into the run's own timestamped folder
            ``<work_dir>/<timestamp>/`` (the runner's ``log_dir``, which holds its log) instead
            of ``<work_dir>/<config name>.py``, which keeps the training run's record; a
            single-process run whose folder exists already gets ``<timestamp>_1``, ``_2``...
            ``tools/test.py`` builds its runner this way. Defaults to False.

    Returns:
        Runner: The runner.
    """
    install_mmengine_fixes()
    for note in prepare_cpu_distributed(cfg) + drop_unavailable_vis_backends(cfg):
        print_log(f'build_runner: {note}', logger='current')
    if not records_in_log_dir:
        if 'runner_type' not in cfg:
            return Runner.from_cfg(cfg)
        # pixellm's RUNNERS builds with build_from_cfg, which needs `type`; mmengine's runner
        # builder reads `runner_type` and calls from_cfg.
        return build_runner_from_cfg(cfg, RUNNERS)
    return _records_in_log_dir(_runner_class(cfg)).from_cfg(cfg)


def _runner_class(cfg: Config) -> type:
    """The class ``build_runner_from_cfg`` would build for ``cfg``."""
    runner_type = cfg.get('runner_type', 'Runner')
    if not isinstance(runner_type, str):
        return runner_type
    with RUNNERS.switch_scope_and_registry(cfg.get('_scope_')) as registry:
        runner_cls = registry.get(runner_type)
    if runner_cls is None:
        raise KeyError(f'runner_type {runner_type!r} is not registered in the '
                       f'{RUNNERS.name!r} registry')
    return runner_cls


def _records_in_log_dir(runner_cls: type) -> type:
    """A subclass of ``runner_cls`` that keeps the config dump in its own log folder."""

    class RecordsInLogDir(runner_cls):
        __doc__ = f'{runner_cls.__name__} that dumps its config into its log_dir.'

        def dump_config(self) -> None:
            name = (osp.basename(self.cfg.filename) if self.cfg.filename else
                    f'{self.timestamp}.py')
            self.cfg.dump(osp.join(self.log_dir, name))

        if issubclass(runner_cls, Runner):

            def setup_env(self, env_cfg: Dict) -> None:
                super().setup_env(env_cfg)
                if torch.distributed.is_available() and torch.distributed.is_initialized():
                    return  # every rank must agree on the folder: keep the broadcast timestamp
                base, index = self._timestamp, 0
                while osp.exists(osp.join(self.work_dir, self._timestamp)):
                    index += 1
                    self._timestamp = f'{base}_{index}'

    RecordsInLogDir.__name__ = RecordsInLogDir.__qualname__ = runner_cls.__name__
    return RecordsInLogDir


def _format_value(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Number):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f'{value:.4f}'


def format_metrics(metrics: Dict[str, Any], title: str = 'Test metrics') -> str:
    """Every metric as ``key: value`` on its own line, between two rules.

    Floats get four decimals, e.g. ``gIoU: 0.6123``.

    Args:
        metrics (dict): The dict returned by ``runner.test()``.
        title (str): Text of the first rule. Defaults to ``'Test metrics'``.

    Returns:
        str: The block, without a trailing newline.
    """
    rule = f'===== {title} ====='
    lines = [rule] + [f'{key}: {_format_value(value)}' for key, value in metrics.items()]
    lines.append('=' * len(rule))
    return '\n'.join(lines)
