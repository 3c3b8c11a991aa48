"""Distributed set-up and teardown: process groups on a machine without CUDA, and their release
when a tool ends."""
import datetime
import gc
import logging
import sys
import weakref
from typing import List

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from .tool_config import amp_device_available, type_name


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
