"""``--deepspeed``: a shipped (or the user's) DeepSpeed JSON, filled in from the config's
optimizer wrapper and batch settings, and the config switched to ``FlexibleRunner`` with
:class:`~pixellm.engine.strategies.PixelLMDeepSpeedStrategy`."""
import copy
import json
import os
import os.path as osp
from typing import Any, List

from mmengine.config import Config

from .tool_config import type_name


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
    """Train with DeepSpeed (``--deepspeed NAME``): ``FlexibleRunner`` with DeepSpeed.

    The DeepSpeed JSON's ``"auto"`` values are filled from the config (see
    :func:`resolve_deepspeed_config`): micro-batch from ``train_dataloader.batch_size``,
    accumulation from ``optim_wrapper.accumulative_counts``, clipping from
    ``optim_wrapper.clip_grad`` and bf16 from an ``AmpOptimWrapper`` with ``dtype='bfloat16'``.
    ``optim_wrapper`` becomes ``DeepSpeedOptimWrapper`` around the same optimizer (DeepSpeed then
    accumulates, clips and casts), and ``runner_type``/``strategy`` are set (``strategy`` is
    :class:`~pixellm.engine.strategies.PixelLMDeepSpeedStrategy`).

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
    # FlexibleRunner builds the strategy before it sets the config's default scope.
    cfg.strategy = dict(type='PixelLMDeepSpeedStrategy', _scope_='pixellm', config=ds_config)
    if cfg.get('env_cfg') is None:
        # FlexibleRunner.from_cfg passes cfg.get('env_cfg') through and fails on None, where
        # Runner falls back to its default.
        cfg.env_cfg = dict(dist_cfg=dict(backend='nccl'))
    zero = ds_config.get('zero_optimization', {})
    return [
        f'runner: FlexibleRunner with PixelLMDeepSpeedStrategy ({path}: ZeRO stage '
        f'{zero.get("stage", 0)}, micro-batch {ds_config["train_micro_batch_size_per_gpu"]}, '
        f'accumulation {ds_config["gradient_accumulation_steps"]}, gradient clipping '
        f'{ds_config["gradient_clipping"]}, {precision})',
        f'optim_wrapper: {old_wrapper} -> DeepSpeedOptimWrapper',
        # DeepSpeedStrategy.save_checkpoint/resume ignore their `callback` argument.
        'mmengine 0.10.7\'s DeepSpeedStrategy calls no before_save_checkpoint/'
        'after_load_checkpoint hooks, so RNGStateHook cannot save the random state: --resume '
        'repeats the data order but not the random draws (dropout) of an unbroken run',
    ]
