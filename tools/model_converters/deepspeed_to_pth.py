"""Consolidate a DeepSpeed checkpoint folder of ``tools/train.py --deepspeed`` into one ``.pth``.

    python tools/model_converters/deepspeed_to_pth.py DS_CHECKPOINT_DIR OUT.pth [--overwrite]

mmengine's ``FlexibleRunner`` with ``DeepSpeedStrategy`` saves each checkpoint as a folder named
like a file, ``<work_dir>/iter_<N>.pth/``: DeepSpeed's ``save_checkpoint(work_dir,
tag='iter_<N>.pth', save_latest=False)`` puts ``mp_rank_00_model_states.pt`` (ZeRO-2) or
``zero_pp_rank_<R>_mp_rank_00_model_states.pt`` (ZeRO-3) and one
``zero_pp_rank_<R>_mp_rank_00_optim_states.pt`` per rank straight into it, and writes no
``latest`` file (mmengine writes ``<work_dir>/last_checkpoint`` instead). DS_CHECKPOINT_DIR may be
that folder, a folder with DeepSpeed's ``latest`` file, or a work dir with ``last_checkpoint``.

The fp32 master weights are gathered from the ZeRO shards by DeepSpeed's own
``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``; a ``module.`` prefix
on every key is stripped so the keys match the model's own ``state_dict``. OUT.pth holds
``{'state_dict': ..., 'meta': ...}`` with a meta of plain types only (the JSON-like entries of
mmengine's meta plus where the weights came from), so ``tools/test.py CONFIG OUT.pth`` loads it
through the allow-listed loader of :mod:`pixellm.engine.checkpoint`.
"""
import argparse
import glob
import os
import os.path as osp
import sys
from typing import Any, Dict, List, Optional, Tuple

# Run from a checkout without installing: the repository root holds the pixellm package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

import torch  # noqa: E402

from pixellm.engine.checkpoint import save_checkpoint_atomic  # noqa: E402
from pixellm.utils.cli import add_debug_argument, cli_main  # noqa: E402

TOOL = 'tools/model_converters/deepspeed_to_pth.py'
MODEL_STATES = ('mp_rank_00_model_states.pt', 'zero_pp_rank_0_mp_rank_00_model_states.pt')
OPTIM_STATES = '*_optim_states.pt'
PREFIX = 'module.'


class NotADeepSpeedCheckpointError(ValueError):
    """A path is not a DeepSpeed checkpoint folder; the message names what was expected."""


def _is_tag_folder(folder: str) -> bool:
    return (any(osp.isfile(osp.join(folder, name)) for name in MODEL_STATES)
            and bool(glob.glob(osp.join(folder, OPTIM_STATES))))


def _expected(path: str, detail: str) -> NotADeepSpeedCheckpointError:
    return NotADeepSpeedCheckpointError(
        f'{path} is not a DeepSpeed checkpoint: {detail}. Expected a folder written by '
        f'tools/train.py --deepspeed (e.g. <work_dir>/iter_<N>.pth/) holding '
        f'{MODEL_STATES[0]} (ZeRO-1/2) or {MODEL_STATES[1]} (ZeRO-3) and the '
        f'zero_pp_rank_<R>_mp_rank_00_optim_states.pt shards, a folder whose "latest" file names '
        f'such a folder, or a work dir whose "last_checkpoint" does.')


def resolve_checkpoint_folder(path: str) -> Tuple[str, str]:
    """Find the DeepSpeed tag folder that ``path`` stands for.

    Args:
        path (str): The tag folder itself (``<work_dir>/iter_<N>.pth``), a folder with DeepSpeed's
            ``latest`` file, or an mmengine work dir with ``last_checkpoint``.

    Returns:
        tuple[str, str]: The parent folder and the tag, as DeepSpeed's ``checkpoint_dir`` and
        ``tag`` arguments; ``osp.join`` of both is the folder with the shards.

    Raises:
        NotADeepSpeedCheckpointError: No DeepSpeed shards were found.
    """
    path = osp.abspath(path)
    if not osp.exists(path):
        raise _expected(path, 'it does not exist')
    if not osp.isdir(path):
        raise _expected(path, 'it is a file, not a folder (a plain .pth needs no conversion)')
    candidates = [path]
    for pointer in ('latest', 'last_checkpoint'):
        pointer_file = osp.join(path, pointer)
        if osp.isfile(pointer_file):
            with open(pointer_file) as f:
                target = f.read().strip()
            candidates.append(target if osp.isabs(target) else osp.join(path, target))
    for folder in candidates:
        if osp.isdir(folder) and _is_tag_folder(folder):
            folder = osp.normpath(folder)
            return osp.dirname(folder), osp.basename(folder)
    found = sorted(os.listdir(path))[:10]
    raise _expected(path, f'no DeepSpeed model/optimizer state files found (it holds {found})')


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _training_meta(folder: str) -> Dict[str, Any]:
    # mmengine's meta (epoch, iter, seed, cfg text, ...) rides in DeepSpeed's client state.
    for name in MODEL_STATES:
        file = osp.join(folder, name)
        if osp.isfile(file):
            # The file is the one DeepSpeed itself unpickles below; it holds mmengine objects.
            states = torch.load(file, map_location='cpu', weights_only=False)
            meta = states.get('meta') if isinstance(states, dict) else None
            return ({k: v for k, v in meta.items() if isinstance(k, str) and _plain(v)}
                    if isinstance(meta, dict) else {})
    return {}


def strip_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix that every key carries (a wrapper's name), else keep the keys.

    Args:
        state_dict (dict[str, Tensor]): Consolidated weights.

    Returns:
        dict[str, Tensor]: The weights under the model's own key names.
    """
    if state_dict and all(key.startswith(PREFIX) for key in state_dict):
        return {key[len(PREFIX):]: value for key, value in state_dict.items()}
    return dict(state_dict)


def convert(checkpoint: str, out: str, overwrite: bool = False) -> Dict[str, Any]:
    """Write the consolidated fp32 weights of a DeepSpeed checkpoint as an mmengine ``.pth``.

    Args:
        checkpoint (str): See :func:`resolve_checkpoint_folder`.
        out (str): The ``.pth`` to write (atomically).
        overwrite (bool): Replace an existing ``out``. Defaults to False.

    Returns:
        dict: The checkpoint written, ``{'state_dict': ..., 'meta': ...}``.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        NotADeepSpeedCheckpointError: ``checkpoint`` holds no DeepSpeed shards.
    """
    if osp.exists(out) and not overwrite:
        raise FileExistsError(f'{out} exists; pass --overwrite to replace it')
    parent, tag = resolve_checkpoint_folder(checkpoint)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    state_dict = get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag)
    state_dict = {key: value.detach().float().contiguous().clone()
                  for key, value in strip_module_prefix(state_dict).items()}
    folder = osp.join(parent, tag)
    meta = _training_meta(folder)
    meta.update(converted_from=folder, converter=TOOL)
    ckpt = dict(state_dict=state_dict, meta=meta)
    out_dir = osp.dirname(osp.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint_atomic(ckpt, out)
    return ckpt


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``sys.argv[1:]`` when None.

    Returns:
        argparse.Namespace: ``checkpoint``, ``out`` and ``overwrite``.
    """
    parser = argparse.ArgumentParser(
        description='Consolidate a DeepSpeed (ZeRO) checkpoint folder of tools/train.py '
                    '--deepspeed into one fp32 .pth for tools/test.py')
    parser.add_argument('checkpoint', help='the checkpoint folder, e.g. work_dir/iter_1000.pth')
    parser.add_argument('out', help='the .pth file to write')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing OUT')
    add_debug_argument(parser)
    return parser.parse_args(argv)


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    """Command line entry point; errors end the program with their message.

    Args:
        argv (list[str], optional): Arguments; ``sys.argv[1:]`` when None.
    """
    args = parse_args(argv)
    try:
        ckpt = convert(args.checkpoint, args.out, overwrite=args.overwrite)
    except (FileExistsError, NotADeepSpeedCheckpointError) as err:
        raise SystemExit(f'{TOOL}: error: {err}')
    print(f'Wrote {len(ckpt["state_dict"])} fp32 tensors to {args.out}')


if __name__ == '__main__':
    main()
