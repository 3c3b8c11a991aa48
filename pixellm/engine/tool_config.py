"""The command-line options the tools share, and the config edits and checks they make before a
runner is built."""
import argparse
import os
import os.path as osp
from typing import Any, List, Optional, Sequence

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available

from pixellm.datasets.preflight import MissingDataError, check_data_paths
from pixellm.utils import load_config, register_all_modules
from pixellm.utils.cli import add_debug_argument
from .checkpoint import set_checkpoint_trust


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
