"""The command line shared by the converters of released checkpoints (PixelLM, LISA).

A tool names its model family's converter and defaults; this module parses the common arguments,
builds the config's model on the meta device, converts, writes the ``.pth`` and prints what was
dropped and set.
"""
import argparse
import os
import os.path as osp
from collections import Counter
from typing import Callable, Dict, Optional

import torch

from .key_mapping import ConversionResult

# (official state dict, target state dict, CLIP weights or None, parsed arguments) -> result.
Convert = Callable[[Dict[str, torch.Tensor], Dict[str, torch.Tensor],
                    Optional[Dict[str, torch.Tensor]], argparse.Namespace], ConversionResult]


def converter_parser(description: str, src_help: str, default_config: str, config_help: str,
                     clip_help: str) -> argparse.ArgumentParser:
    """The arguments every converter takes: SRC, DST, ``--config``, ``--clip``, ``--lora-seed``,
    ``--cfg-options`` and ``--debug``. A tool adds its own before parsing.

    Args:
        description (str): The tool's description.
        src_help (str): What SRC is.
        default_config (str): The config converted for when ``--config`` is not given.
        config_help (str): Help of ``--config``.
        clip_help (str): Help of ``--clip``.

    Returns:
        argparse.ArgumentParser: The parser.
    """
    from mmengine.config import DictAction

    from pixellm.utils.cli import add_debug_argument
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help=src_help)
    parser.add_argument('dst', help='output .pth file')
    parser.add_argument('--config', default=default_config, help=config_help)
    parser.add_argument('--clip', help=clip_help)
    parser.add_argument('--lora-seed', type=int, default=0,
                        help='seed of the lora_A initialisation (lora_B is zero)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    add_debug_argument(parser)
    return parser


def _save(checkpoint: dict, dst: str) -> None:
    """``torch.save`` under a temporary name, renamed when complete."""
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    tmp = f'{dst}.tmp-{os.getpid()}'
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def print_report(result: ConversionResult, dst: str) -> None:
    """Print the written file, the converter's notes, and the dropped and set weights."""
    print(f'wrote {dst}: {len(result.state_dict)} tensors')
    for note in result.notes:
        print(f'  {note}')
    reasons = Counter(result.dropped.values())
    for reason, count in reasons.items():
        keys = sorted(k for k, r in result.dropped.items() if r == reason)
        print(f'  dropped {count} official weight(s), {reason}: {keys[:6]}'
              f'{" ..." if count > 6 else ""}')
    values = Counter(result.filled.values())
    for value, count in values.items():
        keys = sorted(k for k, v in result.filled.items() if v == value)
        print(f'  set {count} weight(s) not in the checkpoint to {value}: {keys[:3]}'
              f'{" ..." if count > 3 else ""}')


def run_conversion(args: argparse.Namespace, tool: str, convert: Convert) -> ConversionResult:
    """Convert ``args.src`` for ``args.config``'s model, write ``args.dst``, print the report.

    Args:
        args (argparse.Namespace): From :func:`converter_parser` (and the tool's own arguments).
        tool (str): The tool's path, which starts its error messages.
        convert (callable): The family's converter, called with the official and target state
            dicts, the CLIP weights (or None) and ``args``.

    Returns:
        ConversionResult: The converted state dict and the report.

    Raises:
        SystemExit: DST is SRC, or the checkpoint does not fit the model (the keys named).
    """
    from pixellm.models.export import CheckpointMismatchError
    from pixellm.models.meta_build import build_on_meta
    from pixellm.utils import load_config, register_all_modules
    from .hf_checkpoint import load_hf_state_dict, read_hf_config
    from .official_pixellm import load_clip_vision_weights
    if osp.abspath(args.dst) == osp.abspath(args.src):
        raise SystemExit(f'{tool}: DST must differ from SRC')
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    register_all_modules()
    target = build_on_meta(cfg.model).state_dict()
    hf_config = read_hf_config(args.src)
    official = load_hf_state_dict(args.src)
    clip = load_clip_vision_weights(args.clip) if args.clip else None
    try:
        result = convert(official, target, clip, args)
    except CheckpointMismatchError as err:
        raise SystemExit(f'{tool}: {err}\n(model of {args.config})') from err
    tower = hf_config.get('mm_vision_tower') or hf_config.get('vision_tower')
    meta = dict(converted_from=osp.abspath(args.src), config=args.config,
                clip=args.clip and osp.abspath(args.clip), official_vision_tower=tower,
                dropped=sorted(result.dropped), filled=dict(result.filled))
    _save(dict(state_dict=result.state_dict, meta=meta), args.dst)
    if tower:
        print(f'the checkpoint was trained with the vision tower {tower!r}')
    print_report(result, args.dst)
    return result
