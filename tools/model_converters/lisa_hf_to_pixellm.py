"""Convert a released LISA checkpoint (``xinlai/LISA-7B-v1`` ...) into a toolbox ``.pth``.

    python tools/model_converters/lisa_hf_to_pixellm.py LISA-7B-v1 lisa_7b.pth \
        --clip clip-vit-large-patch14 [--config configs/_base_/models/lisa_7b.py]

SRC is a folder written by LISA's ``merge_lora_weights_and_save_hf_model.py``
(``xinlai/LISA-7B-v1``, ``xinlai/LISA-13B-llama2-v1``...: sharded ``pytorch_model-*.bin`` or
safetensors with their index) or one weight file. It holds LLaMA, ``mm_projector``, SAM and ``text_hidden_fcs`` but no CLIP, so
``--clip`` names the CLIP checkpoint LISA reads (a local copy of ``openai/clip-vit-large-patch14``).
The model is built from CONFIG on the meta device (no weights, nothing downloaded) and the result
has exactly its keys and shapes; anything that does not fit stops the conversion with the
mismatched keys. The output loads with ``tools/test.py CONFIG DST`` (e.g. the configs/lisa eval
configs).

Left out and set (printed at the end): the LoRA adapters (zero update; the official LoRA is merged)
and any buffer the checkpoint saved that the model computes (rotary ``inv_freq``).
"""
import argparse
import os
import os.path as osp
import sys
from collections import Counter

# Run from a checkout without installing: the repository root holds the pixellm package.
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from pixellm.models.converters import (ConversionResult, convert_official_lisa,  # noqa: E402
                                       load_clip_vision_weights, load_hf_state_dict,
                                       read_hf_config)
from pixellm.models.export import CheckpointMismatchError  # noqa: E402
from pixellm.models.meta_build import build_on_meta  # noqa: E402
from pixellm.utils import load_config, register_all_modules  # noqa: E402
from pixellm.utils.cli import add_debug_argument, cli_main  # noqa: E402

TOOL = 'tools/model_converters/lisa_hf_to_pixellm.py'
DEFAULT_CONFIG = osp.join(REPO, 'configs', '_base_', 'models', 'lisa_7b.py')


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Convert a released LISA folder into a pixellm '
                                     'checkpoint')
    parser.add_argument('src', help='released LISA folder, or one weight file')
    parser.add_argument('dst', help='output .pth file')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='config whose model the checkpoint is converted for (default: '
                        'LISA-7B; use configs/_base_/models/lisa_13b.py for LISA-13B-llama2)')
    parser.add_argument('--clip', help='CLIP checkpoint folder or file (openai/'
                        'clip-vit-large-patch14), needed when SRC has no CLIP weights')
    parser.add_argument('--lora-seed', type=int, default=0,
                        help='seed of the lora_A initialisation (lora_B is zero)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    add_debug_argument(parser)
    return parser.parse_args(argv)


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


def _print_report(result: ConversionResult, dst: str) -> None:
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


@cli_main
def main(argv=None) -> ConversionResult:
    """Convert, save and print what was dropped and set.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        ConversionResult: The converted state dict and the report.
    """
    args = parse_args(argv)
    if osp.abspath(args.dst) == osp.abspath(args.src):
        raise SystemExit(f'{TOOL}: DST must differ from SRC')
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    register_all_modules()
    target = build_on_meta(cfg.model).state_dict()
    hf_config = read_hf_config(args.src)
    official = load_hf_state_dict(args.src)
    clip = load_clip_vision_weights(args.clip) if args.clip else None
    try:
        result = convert_official_lisa(official, target, clip=clip, lora_seed=args.lora_seed,
                                       source=args.src)
    except CheckpointMismatchError as err:
        raise SystemExit(f'{TOOL}: {err}\n(model of {args.config})') from err
    tower = hf_config.get('mm_vision_tower') or hf_config.get('vision_tower')
    meta = dict(converted_from=osp.abspath(args.src), config=args.config,
                clip=args.clip and osp.abspath(args.clip), official_vision_tower=tower,
                dropped=sorted(result.dropped), filled=dict(result.filled))
    _save(dict(state_dict=result.state_dict, meta=meta), args.dst)
    if tower:
        print(f'the checkpoint was trained with the vision tower {tower!r}')
    _print_report(result, args.dst)
    return result


if __name__ == '__main__':
    main()
