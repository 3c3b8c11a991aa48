"""Config edits and runner construction shared by ``tools/train.py`` and ``tools/test.py``."""
import argparse
import copy
import datetime
import gc
import json
import logging
import os
import os.path as osp
import sys
import weakref
from numbers import Number
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import print_log
from mmengine.registry import build_runner_from_cfg
from mmengine.runner import Runner

from pixellm.datasets.preflight import MissingDataError, check_data_paths
from pixellm.registry import RUNNERS
from pixellm.utils import load_config, register_all_modules
from pixellm.utils.cli import add_debug_argument
from .checkpoint import set_checkpoint_trust
from .mmengine_fixes import install_mmengine_fixes

CHECKPOINT_HOOK = 'pixellm.AtomicCheckpointHook'
RNG_HOOK = 'pixellm.RNGStateHook'
VISUALIZATION_HOOK = 'pixellm.PixelLMVisualizationHook'


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both tools take: work dir, checkpoint trust, overrides, launcher, ``--debug``.

    Args:
        parser (argparse.ArgumentParser): The tool's parser, after its positional arguments.
    """
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: the '
                        "config's work_dir, else work_dirs/<config name>)")
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle checkpoints without the allow-list (only for files you '
                        'trust)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. train_cfg.max_iters=100 '
        'test_dataloader.batch_size=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    add_debug_argument(parser)
    # torch.distributed.launch passes --local-rank (or --local_rank on older torch).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def load_tool_config(args: argparse.Namespace) -> Config:
    """Apply the common options and load the config with its plugins and pixellm registered.

    Args:
        args (argparse.Namespace): Parsed arguments with ``config`` and the options of
            :func:`add_common_arguments`.

    Returns:
        Config: The config with ``launcher`` and ``work_dir`` set.
    """
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    set_checkpoint_trust(args.trust_checkpoint)
    register_all_modules(init_default_scope=True)
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    cfg.launcher = args.launcher
    apply_work_dir(cfg, args.config, args.work_dir)
    return cfg


def type_name(obj_type: Any) -> str:
    """The registry name of a config ``type``: a string without scope, or a class's name.

    Args:
        obj_type (str | type): ``'CheckpointHook'``, ``'mmengine.CheckpointHook'`` or a class
            (lazy configs import classes).

    Returns:
        str: The bare name, e.g. ``'CheckpointHook'``.
    """
    if isinstance(obj_type, str):
        return obj_type.split('.')[-1]
    return getattr(obj_type, '__name__', str(obj_type))


def _hook_type(hook: Any) -> str:
    # custom_hooks may hold built Hook objects when a config is assembled in code.
    return type_name(hook.get('type')) if isinstance(hook, dict) else type(hook).__name__


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config file name without .py>``, relative to the current directory.

    Args:
        config_path (str): The config file.

    Returns:
        str: The work directory.
    """
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


def apply_work_dir(cfg: Config, config_path: str, work_dir: Optional[str] = None) -> str:
    """Set ``cfg.work_dir``: the CLI value, else the config's, else :func:`default_work_dir`.

    Args:
        cfg (Config): The config, edited in place.
        config_path (str): The config file.
        work_dir (str, optional): ``--work-dir``. Defaults to None.

    Returns:
        str: The chosen work directory.
    """
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(config_path)
    return cfg.work_dir


def apply_resume(cfg: Config, resume: Optional[str]) -> None:
    """Translate ``--resume [CKPT|auto]`` into ``cfg.resume``/``cfg.load_from``.

    Args:
        cfg (Config): The config, edited in place.
        resume (str, optional): ``None`` (no flag), ``'auto'`` (the checkpoint named by
            ``<work_dir>/last_checkpoint``) or a checkpoint path.
    """
    if resume is None:
        return
    cfg.resume = True
    # mmengine resumes from load_from when it is set and from last_checkpoint otherwise.
    cfg.load_from = None if resume == 'auto' else resume


def apply_seed(cfg: Config, seed: Optional[int]) -> None:
    """Set ``cfg.randomness.seed`` from ``--seed``, keeping the other randomness options.

    Args:
        cfg (Config): The config, edited in place.
        seed (int, optional): The seed; ``None`` leaves the config alone.
    """
    if seed is None:
        return
    randomness = dict(cfg.get('randomness') or {})
    randomness['seed'] = seed
    cfg.randomness = randomness


def amp_device_available() -> bool:
    """Whether mmengine 0.10.7's ``AmpOptimWrapper`` can be built here.

    Returns:
        bool: ``True`` if a CUDA, NPU, MLU or MUSA device is available.
    """
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def apply_amp(cfg: Config, dtype: str = 'bfloat16') -> None:
    """Switch ``cfg.optim_wrapper`` to ``AmpOptimWrapper`` (``--amp``).

    Args:
        cfg (Config): The config, edited in place.
        dtype (str): Autocast dtype unless the config sets one. Defaults to ``'bfloat16'``.

    Raises:
        RuntimeError: No accelerator: mmengine 0.10.7's ``AmpOptimWrapper.__init__`` asserts that
            CUDA, NPU, MLU or MUSA is available and has no CPU path.
        ValueError: The config's optimizer wrapper is neither ``OptimWrapper`` nor
            ``AmpOptimWrapper``.
    """
    if not amp_device_available():
        raise RuntimeError(
            '--amp needs a CUDA, NPU, MLU or MUSA device: mmengine 0.10.7\'s AmpOptimWrapper '
            'asserts one is available when it is built (mmengine/optim/optimizer/'
            'amp_optimizer_wrapper.py), so AMP training, bfloat16 included, does not run on the '
            'CPU. Drop --amp to train in float32 on the CPU.')
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is None:
        raise ValueError('--amp: the config has no optim_wrapper to switch to AmpOptimWrapper.')
    current = type_name(optim_wrapper.get('type', 'OptimWrapper'))
    if current == 'OptimWrapper':
        optim_wrapper['type'] = 'AmpOptimWrapper'
    elif current != 'AmpOptimWrapper':
        raise ValueError(f'--amp: optim_wrapper type {current!r} cannot be switched to '
                         'AmpOptimWrapper; set the wrapper in the config instead.')
    optim_wrapper.setdefault('dtype', dtype)
    optim_wrapper.setdefault('loss_scale', 'dynamic')


def enable_resume_safety(cfg: Config) -> List[str]:
    """Use :class:`AtomicCheckpointHook` and :class:`RNGStateHook` unless the config opts out.

    ``default_hooks.checkpoint`` of type ``CheckpointHook`` (or absent, which means mmengine's
    default ``CheckpointHook(interval=1)``) becomes ``AtomicCheckpointHook`` with the same
    arguments; ``default_hooks.checkpoint=None`` (no checkpoints) and other hook types are kept.
    ``RNGStateHook`` is appended to ``custom_hooks`` if missing.

    Args:
        cfg (Config): The config, edited in place.

    Returns:
        list[str]: One line per change or per hook left alone, for the log.
    """
    notes = []
    if cfg.get('default_hooks') is None:
        cfg.default_hooks = ConfigDict()
    default_hooks = cfg.default_hooks
    if 'checkpoint' not in default_hooks:
        default_hooks['checkpoint'] = dict(type=CHECKPOINT_HOOK, interval=1)
        notes.append('default_hooks.checkpoint: AtomicCheckpointHook(interval=1) added '
                     "(mmengine's default is CheckpointHook(interval=1))")
    elif default_hooks['checkpoint'] is not None:
        name = type_name(default_hooks['checkpoint'].get('type'))
        if name == 'CheckpointHook':
            default_hooks['checkpoint']['type'] = CHECKPOINT_HOOK
            notes.append('default_hooks.checkpoint: CheckpointHook -> AtomicCheckpointHook')
        elif name != 'AtomicCheckpointHook':
            notes.append(f'default_hooks.checkpoint: {name} kept; its writes are not atomic')
    custom_hooks = list(cfg.get('custom_hooks') or [])
    if not any(_hook_type(hook) == 'RNGStateHook' for hook in custom_hooks):
        custom_hooks.append(dict(type=RNG_HOOK))
        notes.append('custom_hooks: RNGStateHook added')
    cfg.custom_hooks = custom_hooks
    return notes


def set_show_dir(cfg: Config, show_dir: str) -> None:
    """Make the test write a PNG of every prediction to ``show_dir`` (``--show-dir``).

    An existing ``PixelLMVisualizationHook`` in ``custom_hooks`` gets ``test_out_dir=show_dir``;
    otherwise one is appended.

    Args:
        cfg (Config): The config, edited in place.
        show_dir (str): Output directory.
    """
    custom_hooks = list(cfg.get('custom_hooks') or [])
    for hook in custom_hooks:
        if _hook_type(hook) == 'PixelLMVisualizationHook':
            hook['test_out_dir'] = show_dir
            break
    else:
        custom_hooks.append(dict(type=VISUALIZATION_HOOK, test_out_dir=show_dir))
    cfg.custom_hooks = custom_hooks


def check_data_or_exit(cfg: Config, dataloaders: Sequence[str], tool: str) -> None:
    """Exit with the list of missing data paths before the runner (and the model) is built.

    Args:
        cfg (Config): The full config.
        dataloaders (Sequence[str]): The dataloaders the tool will use, e.g.
            ``('train_dataloader', 'val_dataloader')``.
        tool (str): The tool's name for the message, e.g. ``'tools/train.py'``.

    Raises:
        SystemExit: A dataset reads a file or folder that does not exist; the message names every
            such path, its dataset and ``docs/datasets.md`` (see
            :func:`pixellm.datasets.preflight.check_data_paths`).
    """
    try:
        check_data_paths(cfg, dataloaders)
    except MissingDataError as err:
        raise SystemExit(f'{tool}: {err}') from err


def drop_unavailable_vis_backends(cfg: Config) -> List[str]:
    """Remove a ``TensorboardVisBackend`` from ``cfg.visualizer`` when TensorBoard is missing.

    The recipes log to local files and to TensorBoard; mmengine's backend fails at its first write
    without the ``tensorboard`` package, so without it the images and scalars go to the local
    files only, and a note says so.

    Args:
        cfg (Config): The full config, edited in place.

    Returns:
        list[str]: Notes for the log (empty when nothing was removed).
    """
    import importlib.util
    visualizer = cfg.get('visualizer')
    if not isinstance(visualizer, dict) or not visualizer.get('vis_backends'):
        return []
    if importlib.util.find_spec('tensorboard') is not None:
        return []
    backends = list(visualizer['vis_backends'])
    kept = [b for b in backends
            if not (isinstance(b, dict) and type_name(b.get('type')) == 'TensorboardVisBackend')]
    if len(kept) == len(backends):
        return []
    visualizer['vis_backends'] = kept
    return ['TensorBoard is not installed (pip install tensorboard): TensorboardVisBackend is '
            'left out; images and scalars go to the local vis_data folder only']


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


# ------------------------------------------------------------------------------------------------
# Distributed launches: DeepSpeed (``--deepspeed``) and CPU-only process groups.

# Shipped inside the package (pixellm/configs/deepspeed), so a non-editable install has them.
DEEPSPEED_CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs',
                                'deepspeed')
AUTO = 'auto'
# optim_wrapper keys that become DeepSpeed settings; DeepSpeedOptimWrapper takes only `optimizer`.
_DEEPSPEED_FOLDED_KEYS = ('type', 'accumulative_counts', 'clip_grad', 'dtype', 'loss_scale')
_DEEPSPEED_KEPT_KEYS = ('optimizer', 'constructor', 'paramwise_cfg')


def deepspeed_config_names() -> List[str]:
    """The DeepSpeed configs shipped in ``configs/deepspeed/``.

    Returns:
        list[str]: Names without ``.json``, e.g. ``['zero2', 'zero2_offload', 'zero3']``.
    """
    if not osp.isdir(DEEPSPEED_CONFIG_DIR):
        return []
    return sorted(osp.splitext(name)[0] for name in os.listdir(DEEPSPEED_CONFIG_DIR)
                  if name.endswith('.json'))


def deepspeed_config_path(name: str) -> str:
    """The JSON file meant by ``--deepspeed NAME``.

    Args:
        name (str): A name from :func:`deepspeed_config_names` or a path to a JSON file.

    Returns:
        str: The file path.

    Raises:
        FileNotFoundError: ``name`` is neither a shipped config nor an existing file.
    """
    if name.endswith('.json') or os.sep in name:
        if osp.isfile(name):
            return name
        raise FileNotFoundError(f'--deepspeed: DeepSpeed config file {name!r} does not exist.')
    path = osp.join(DEEPSPEED_CONFIG_DIR, f'{name}.json')
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'--deepspeed: no DeepSpeed config named {name!r} in {DEEPSPEED_CONFIG_DIR}; '
            f'choose one of {deepspeed_config_names()} or pass a path to a .json file.')
    return path


def _deepspeed_precision(optim_wrapper: dict) -> str:
    """``'bf16'`` or ``'fp32'``: the precision the config's optimizer wrapper trains in."""
    wrapper = type_name(optim_wrapper.get('type', 'OptimWrapper'))
    if wrapper == 'OptimWrapper':
        return 'fp32'
    if wrapper == 'AmpOptimWrapper':
        dtype = optim_wrapper.get('dtype')
        if str(dtype).replace('torch.', '') in ('bfloat16', 'bf16'):
            return 'bf16'
        raise ValueError(
            f'--deepspeed: optim_wrapper is AmpOptimWrapper with dtype={dtype!r} (float16 when '
            'unset); DeepSpeed fp16 needs loss scaling and input casting that pixellm models do '
            "not configure. Set optim_wrapper.dtype='bfloat16' or use OptimWrapper (float32).")
    raise ValueError(f'--deepspeed: optim_wrapper type {wrapper!r} cannot be converted to '
                     'DeepSpeedOptimWrapper; only OptimWrapper and AmpOptimWrapper can.')


def _deepspeed_max_norm(optim_wrapper: dict) -> float:
    """DeepSpeed's ``gradient_clipping`` for the config's ``clip_grad`` (0.0: no clipping)."""
    clip_grad = optim_wrapper.get('clip_grad')
    if not clip_grad:
        return 0.0
    if clip_grad.get('type', 'norm') != 'norm' or float(clip_grad.get('norm_type', 2)) != 2:
        raise ValueError(
            f'--deepspeed: optim_wrapper.clip_grad={dict(clip_grad)} cannot be expressed in '
            'DeepSpeed, which clips the L2 norm of all gradients (gradient_clipping); use '
            "clip_grad=dict(max_norm=...) or no clipping.")
    return float(clip_grad['max_norm'])


def _leftover_auto(value: Any, prefix: str = '') -> List[str]:
    if isinstance(value, dict):
        return [key for k, v in value.items()
                for key in _leftover_auto(v, f'{prefix}{k}.')]
    return [prefix[:-1]] if value == AUTO else []


def resolve_deepspeed_config(ds_config: dict, *, micro_batch_size: int, accumulation_steps: int,
                             max_norm: float, precision: str,
                             source: str = 'the DeepSpeed config') -> dict:
    """Fill the ``"auto"`` values of a DeepSpeed config and check the others against the runner.

    Args:
        ds_config (dict): The DeepSpeed config as read from JSON; not modified.
        micro_batch_size (int): ``train_dataloader.batch_size``.
        accumulation_steps (int): ``optim_wrapper.accumulative_counts``.
        max_norm (float): Gradient clipping norm, 0.0 for none.
        precision (str): ``'bf16'`` or ``'fp32'``.
        source (str): How to name the config in messages (its file). Defaults to
            ``'the DeepSpeed config'``.

    Returns:
        dict: A new config with every ``"auto"`` replaced (``train_batch_size: "auto"`` is
        dropped: DeepSpeed derives it from the micro-batch, the accumulation and the world size).

    Raises:
        ValueError: A set value disagrees with the runner's (the message names every such pair),
            or an ``"auto"`` remains that this function does not know how to fill.
    """
    resolved = copy.deepcopy(ds_config)
    expected = [
        ('train_micro_batch_size_per_gpu', micro_batch_size, 'train_dataloader.batch_size'),
        ('gradient_accumulation_steps', accumulation_steps, 'optim_wrapper.accumulative_counts'),
        ('gradient_clipping', max_norm, 'optim_wrapper.clip_grad.max_norm'),
    ]
    mismatches = []
    for key, value, origin in expected:
        current = resolved.get(key, AUTO)
        if current == AUTO:
            resolved[key] = value
        elif float(current) != float(value):
            shown = value if value or key != 'gradient_clipping' else 'None (no clip_grad)'
            mismatches.append(f'{key}={current} but {origin}={shown}')
    for section, enabled in (('bf16', precision == 'bf16'), ('fp16', False)):
        if section not in resolved and not enabled:
            continue
        options = dict(resolved.get(section) or {})
        current = options.get('enabled', AUTO)
        if current == AUTO:
            options['enabled'] = enabled
        elif bool(current) != enabled:
            mismatches.append(f'{section}.enabled={current} but the config trains in {precision} '
                              '(optim_wrapper type and dtype)')
        resolved[section] = options
    if mismatches:
        raise ValueError(
            f'--deepspeed: {source} disagrees with the config: ' + '; '.join(mismatches) +
            '. Set these to "auto" in the JSON (they are then filled from the config) or change '
            'the config (e.g. with --cfg-options).')
    if resolved.get('train_batch_size') == AUTO:
        del resolved['train_batch_size']
    leftover = _leftover_auto(resolved)
    if leftover:
        raise ValueError(f'--deepspeed: {source} sets {leftover} to "auto", which pixellm does '
                         'not fill; give numbers.')
    return resolved


def apply_deepspeed(cfg: Config, name: str) -> List[str]:
    """Train with DeepSpeed (``--deepspeed NAME``): ``FlexibleRunner`` + ``DeepSpeedStrategy``.

    The DeepSpeed JSON's ``"auto"`` values are filled from the config (see
    :func:`resolve_deepspeed_config`): micro-batch from ``train_dataloader.batch_size``,
    accumulation from ``optim_wrapper.accumulative_counts``, clipping from
    ``optim_wrapper.clip_grad`` and bf16 from an ``AmpOptimWrapper`` with ``dtype='bfloat16'``.
    ``optim_wrapper`` becomes ``DeepSpeedOptimWrapper`` around the same optimizer (DeepSpeed then
    accumulates, clips and casts), and ``runner_type``/``strategy`` are set.

    Args:
        cfg (Config): The config after the command-line overrides, edited in place.
        name (str): ``zero2``, ``zero2_offload``, ``zero3`` (``configs/deepspeed/``) or a path
            to a DeepSpeed JSON file.

    Returns:
        list[str]: One line per change, for the log.

    Raises:
        FileNotFoundError: ``name`` names no config.
        ValueError: No launcher (DeepSpeed needs a process group), no ``optim_wrapper`` or
            ``train_dataloader``, a ``load_from`` file (not a DeepSpeed folder), a
            wrapper/precision/clipping DeepSpeed cannot express, or a JSON value that disagrees
            with the config.
    """
    path = deepspeed_config_path(name)
    if cfg.get('launcher', 'none') == 'none':
        raise ValueError(
            '--deepspeed needs a distributed launcher (DeepSpeed initialises a process group '
            'even for one process). Run tools/dist_train.sh CONFIG GPUS --deepspeed '
            f'{name} (GPUS=1 for one GPU), or torchrun ... tools/train.py --launcher pytorch.')
    optim_wrapper = cfg.get('optim_wrapper')
    train_dataloader = cfg.get('train_dataloader')
    if optim_wrapper is None or train_dataloader is None:
        raise ValueError('--deepspeed: the config has no optim_wrapper or no train_dataloader; '
                         'DeepSpeed is for training.')
    unknown = sorted(set(optim_wrapper) - set(_DEEPSPEED_FOLDED_KEYS) - set(_DEEPSPEED_KEPT_KEYS))
    if unknown:
        raise ValueError(f'--deepspeed: optim_wrapper options {unknown} have no DeepSpeed '
                         'counterpart; remove them to train with DeepSpeed.')
    load_from = cfg.get('load_from')
    if load_from and osp.isfile(load_from):
        # DeepSpeedStrategy.load_checkpoint/resume call DeepSpeedEngine.load_checkpoint(folder, tag).
        raise ValueError(
            f'--deepspeed: load_from={load_from!r} is a file, but mmengine\'s DeepSpeedStrategy '
            'loads and resumes only DeepSpeed checkpoint folders (iter_N.pth/ written by a '
            '--deepspeed run). Train without --deepspeed to start from this checkpoint.')
    precision = _deepspeed_precision(optim_wrapper)
    with open(path) as f:
        ds_config = json.load(f)
    ds_config = resolve_deepspeed_config(
        ds_config, micro_batch_size=int(train_dataloader.get('batch_size', 1)),
        accumulation_steps=int(optim_wrapper.get('accumulative_counts', 1)),
        max_norm=_deepspeed_max_norm(optim_wrapper), precision=precision, source=path)

    old_wrapper = type_name(optim_wrapper.get('type', 'OptimWrapper'))
    cfg.optim_wrapper = dict(type='DeepSpeedOptimWrapper',
                             **{k: optim_wrapper[k] for k in _DEEPSPEED_KEPT_KEYS
                                if k in optim_wrapper})
    cfg.runner_type = 'FlexibleRunner'
    # pixellm has no strategy registry; _scope_ spares mmengine's "failed to search" warning.
    cfg.strategy = dict(type='DeepSpeedStrategy', _scope_='mmengine', config=ds_config)
    if cfg.get('env_cfg') is None:
        # FlexibleRunner.from_cfg passes cfg.get('env_cfg') through and fails on None, where
        # Runner falls back to its default.
        cfg.env_cfg = dict(dist_cfg=dict(backend='nccl'))
    zero = ds_config.get('zero_optimization', {})
    return [
        f'runner: FlexibleRunner with DeepSpeedStrategy ({path}: ZeRO stage '
        f'{zero.get("stage", 0)}, micro-batch {ds_config["train_micro_batch_size_per_gpu"]}, '
        f'accumulation {ds_config["gradient_accumulation_steps"]}, gradient clipping '
        f'{ds_config["gradient_clipping"]}, {precision})',
        f'optim_wrapper: {old_wrapper} -> DeepSpeedOptimWrapper',
        # DeepSpeedStrategy.save_checkpoint/resume ignore their `callback` argument.
        'mmengine 0.10.7\'s DeepSpeedStrategy calls no before_save_checkpoint/'
        'after_load_checkpoint hooks, so RNGStateHook cannot save the random state: --resume '
        'repeats the data order but not the random draws (dropout) of an unbroken run',
    ]


# Transformer blocks each FSDP unit holds: one all-gather per block in forward and backward, so a
# 7B/13B model is never gathered whole.
FSDP_LAYER_CLASSES = ('LlamaDecoderLayer', 'MistralDecoderLayer', 'Qwen2DecoderLayer',
                      'CLIPEncoderLayer')
FSDP_WRAP_POLICY = 'pixellm_layer_wrap_policy'


def layer_wrap_policy(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int,
                      layer_classes: Sequence[str] = FSDP_LAYER_CLASSES) -> bool:
    """FSDP auto-wrap policy: one unit per transformer block (by class name).

    Registered in mmengine's ``FUNCTIONS`` as ``pixellm_layer_wrap_policy``, so a config names it
    (``auto_wrap_policy=dict(type='pixellm_layer_wrap_policy', layer_classes=[...])``).

    Args:
        module (nn.Module): The module FSDP asks about.
        recurse (bool): FSDP asks whether to descend into ``module``: always.
        nonwrapped_numel (int): Parameters not yet wrapped (unused).
        layer_classes (Sequence[str]): Class names that become units.

    Returns:
        bool: Whether to descend (``recurse``) or to wrap ``module``.
    """
    return True if recurse else type(module).__name__ in tuple(layer_classes)




def apply_fsdp(cfg: Config) -> List[str]:
    """Train with PyTorch FSDP (``--fsdp``): ``FlexibleRunner`` + mmengine's ``FSDPStrategy``.

    Parameters, gradients and optimizer states are sharded over the ranks (``FULL_SHARD``), one
    unit per transformer block of the LLM and of CLIP (:data:`FSDP_LAYER_CLASSES`) plus the rest
    of the model at the root. ``use_orig_params`` keeps frozen weights, LoRA and the trainable
    token rows side by side in one unit. Checkpoints hold the full state dict (rank 0 writes an
    ordinary ``.pth`` that ``tools/test.py`` loads). The optimizer wrapper of
    the config stays: ``OptimWrapper``, or ``AmpOptimWrapper`` (bf16 autocast) on GPUs.
    Generation during validation runs in step across ranks (``PixelLM.sync_ranks``).

    Args:
        cfg (Config): The config after the command-line overrides, edited in place.

    Returns:
        list[str]: One line per change, for the log.

    Raises:
        ValueError: No launcher, or the config already chose another runner strategy.
    """
    if cfg.get('launcher', 'none') == 'none':
        raise ValueError('--fsdp needs a distributed launcher: run tools/dist_train.sh CONFIG '
                         'GPUS --fsdp, or torchrun ... tools/train.py --launcher pytorch --fsdp.')
    if cfg.get('strategy') and type_name(cfg.strategy.get('type')) != 'FSDPStrategy':
        raise ValueError(f'--fsdp: the config already sets strategy '
                         f'{type_name(cfg.strategy.get("type"))}; use one of them.')
    wrapper = dict(type='MMFullyShardedDataParallel', _scope_='mmengine',
                   sharding_strategy='FULL_SHARD', use_orig_params=True,
                   auto_wrap_policy=dict(type=FSDP_WRAP_POLICY,
                                         layer_classes=list(FSDP_LAYER_CLASSES)))
    cfg.runner_type = 'FlexibleRunner'
    cfg.strategy = dict(type='FSDPStrategy', _scope_='mmengine', model_wrapper=wrapper,
                        state_dict_cfg='full')
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict(dist_cfg=dict(backend='nccl'))
    return [f'runner: FlexibleRunner with FSDPStrategy (FULL_SHARD, one unit per '
            f'{"/".join(FSDP_LAYER_CLASSES)}, full-state-dict checkpoints)']


def prepare_cpu_distributed(cfg: Config) -> List[str]:
    """Let ``--launcher pytorch`` run on a machine without CUDA (e.g. gloo tests on a CPU).

    mmengine 0.10.7's ``init_dist('pytorch')`` calls ``torch.cuda.set_device(LOCAL_RANK)`` on
    every device but MLU/NPU/MUSA, which fails without a CUDA device (``RuntimeError: Found no
    NVIDIA driver``; ``AttributeError`` on CPU-only torch builds), and ``Runner.wrap_model`` and
    ``DDPStrategy`` give DDP ``device_ids=[LOCAL_RANK]``, which DDP rejects for a CPU module.
    Both the runner and the strategies skip ``init_dist`` when a process group exists, so this
    creates the group itself (``env://``; ``nccl`` becomes ``gloo``) and sets
    ``device_ids=None`` for DDP. DeepSpeed picks its CPU accelerator on such a machine and
    reuses the group.

    Args:
        cfg (Config): The config, edited in place; nothing happens unless ``cfg.launcher`` is
            ``'pytorch'`` and no CUDA/NPU/MLU/MUSA device is available.

    Returns:
        list[str]: One line per change, for the log.
    """
    if cfg.get('launcher', 'none') != 'pytorch' or amp_device_available():
        return []
    notes = []
    dist_cfg = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
    backend = dist_cfg.pop('backend', 'nccl')
    if backend == 'nccl':
        backend = 'gloo'
        notes.append('env_cfg.dist_cfg.backend: nccl -> gloo (no CUDA device)')
    if 'timeout' in dist_cfg:
        dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, **dist_cfg)
        notes.append(f'process group: {backend}, rank {torch.distributed.get_rank()} of '
                     f'{torch.distributed.get_world_size()} (CPU)')
    ddp = dict(type='MMDistributedDataParallel', broadcast_buffers=False, device_ids=None)
    if type_name(cfg.get('runner_type', 'Runner')) == 'FlexibleRunner':
        strategy = cfg.get('strategy') or dict(type='DDPStrategy')
        if type_name(strategy.get('type')) == 'FSDPStrategy':
            # FSDPStrategy passes device_id=LOCAL_RANK (a CUDA index); FSDP runs on the CPU only
            # when told so.
            strategy['model_wrapper'] = {**(strategy.get('model_wrapper') or {}),
                                         'device_id': 'cpu'}
            cfg.strategy = strategy
            notes.append("strategy.model_wrapper.device_id: 'cpu' (CPU FSDP)")
        elif type_name(strategy.get('type')) == 'DDPStrategy':
            strategy['model_wrapper'] = {**ddp, **(strategy.get('model_wrapper') or {}),
                                        'device_ids': None}
            cfg.strategy = strategy
            notes.append('strategy.model_wrapper.device_ids: None (CPU DDP)')
    else:
        ddp['find_unused_parameters'] = cfg.get('find_unused_parameters', False)
        cfg.model_wrapper_cfg = {**ddp, **(cfg.get('model_wrapper_cfg') or {}), 'device_ids': None}
        notes.append('model_wrapper_cfg.device_ids: None (CPU DDP)')
    return notes


def release_runner(runner: Runner) -> None:
    """Free what ties a finished runner's process groups down beyond Python's garbage collector.

    A DeepSpeed engine registers hooks on its parameters' gradient accumulators (autograd nodes
    in C++), which keep the engine, its optimizer and their process groups alive after the
    runner is dropped; ``engine.destroy()`` removes them. Call this, then drop every reference
    to the runner, then :func:`shutdown_distributed`.

    Args:
        runner (Runner): A runner whose ``train()`` or ``test()`` has returned.
    """
    engine_cls = getattr(sys.modules.get('deepspeed.runtime.engine'), 'DeepSpeedEngine', None)
    if engine_cls is None:  # DeepSpeed never loaded: no engine to release
        return
    # After train() / test() a FlexibleRunner's model is its strategy's: mmengine's
    # MMDeepSpeedEngineWrapper, which holds the engine as ``.model``.
    wrapper = getattr(runner, 'model', None)
    for engine in (wrapper, getattr(wrapper, 'model', None)):
        if not isinstance(engine, engine_cls):
            continue
        try:
            engine.destroy()
        except Exception as err:  # a finished run stays finished; the warning names the cause
            print_log(f'release_runner: DeepSpeedEngine.destroy() failed ({err!r}); its '
                      'process groups may outlive the run', logger='current',
                      level=logging.WARNING)


def shutdown_distributed() -> None:
    """Tear the process groups down, if any, after a finished run of ``tools/train.py`` or
    ``tools/test.py``; call it once the runner is released (:func:`release_runner`).

    Every rank first waits for the others (rank 0 may still be writing results): a rank that
    tears its group down while a peer still uses it aborts too (seen in a 2-rank test). The
    groups are then destroyed, and freed while the interpreter is fully alive, so that gloo's and
    DeepSpeed's communication threads are joined here and not during interpreter exit, where
    they abort a finished run (SIGABRT). That needs every reference to the groups gone: the
    runner's wrappers (DDP, DeepSpeed engines) are collected first, and DeepSpeed's own group
    registry is cleared by ``deepspeed.comm.destroy_process_group`` when DeepSpeed set up the
    run (its backend was set up in this process). (``torch.distributed.nn.functional`` declares
    ``group=group.WORLD`` defaults, which would pin the default group if imported after it was
    created; ``mmengine.runner`` imports it first.) A group whose Python object is still
    referenced afterwards is named in a warning: ZeRO-3's parameters and hooks hold theirs
    (DeepSpeed 0.19). A group held from C++ alone is not seen by that check.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    gc.collect()  # the released runner's reference cycles hold the DDP / DeepSpeed wrappers
    torch.distributed.barrier()
    groups = list(_process_groups())
    rank = torch.distributed.get_rank()
    ds_comm = sys.modules.get('deepspeed.comm.comm')  # where DeepSpeed keeps its live backend
    if ds_comm is not None and getattr(ds_comm, 'cdb', None) is not None:
        ds_comm.destroy_process_group()  # also drops DeepSpeed's cached groups
    else:
        torch.distributed.destroy_process_group()
    gc.collect()
    alive = [name for name, ref in groups if ref() is not None]
    if alive:
        print_log(f'shutdown_distributed: rank {rank}: process group(s) {", ".join(alive)} are '
                  'still referenced after destroy_process_group; their communication threads '
                  'outlive the run and may abort the process at exit', logger='current',
                  level=logging.WARNING)


def _process_groups():
    """``(name, weakref)`` of every process group c10d knows (private c10d state, read only)."""
    c10d = torch.distributed.distributed_c10d
    names = getattr(getattr(c10d, '_world', None), 'pg_names', None)
    if names is None:  # another torch layout: the default group only
        names = {torch.distributed.group.WORLD: '0'}
    for group, name in list(names.items()):
        try:
            yield name, weakref.ref(group)
        except TypeError:  # a group type without weak references: not checked
            continue
