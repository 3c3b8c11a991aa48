"""Write overlays of dataset samples as the model will see them, to check data before training.

``python tools/misc/browse_dataset.py CONFIG [--split train|val|test] [--num 20]``

Each sample goes through the config's own pipeline (for a mixed dataset, the drawn source's
pipeline); the PNG shows the original image with every target's mask in its own colour, the
question and the answer with each target's codebook tokens shown as ``[k]``, the number of the
mask's colour swatch.
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

import numpy as np
from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from pixellm.visualization import render_mask_overlay  # noqa: E402
from pixellm.text.codebook_tokens import codebook_cfg_tokens, target_string  # noqa: E402
from pixellm.registry import DATASETS  # noqa: E402
from pixellm.utils.cli import add_debug_argument, cli_main  # noqa: E402
from pixellm.utils.config import load_config  # noqa: E402
from pixellm.utils.setup_env import register_all_modules  # noqa: E402

SPLIT_KEYS = dict(train='train_dataloader', val='val_dataloader', test='test_dataloader')


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Write overlays of dataset samples')
    parser.add_argument('config', help='config file')
    parser.add_argument('--split', choices=sorted(SPLIT_KEYS), default='train',
                        help='which dataloader\'s dataset to browse (default: train)')
    parser.add_argument('--num', type=int, default=20, help='samples to write (default: 20)')
    parser.add_argument('--indices', type=int, nargs='+', help='browse these indices instead')
    parser.add_argument('--output-dir', help='where PNGs go (default: '
                        'work_dirs/browse/<config name>/<split>)')
    parser.add_argument('--keep-going', action='store_true',
                        help='report a bad sample and continue instead of stopping')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. train_dataloader.dataset.data_root=/data/muse')
    add_debug_argument(parser)
    return parser.parse_args(argv)


def mark_targets(text: str, tokens: List[str]) -> str:
    """Replace each target's codebook tokens in ``text`` by ``[1]``, ``[2]``, ... in order.

    Args:
        text (str): An answer with codebook tokens written by ``ExpandSegTokens``.
        tokens (list[str]): The codebook's token strings.

    Returns:
        str: The answer with numbered targets.
    """
    run = target_string(tokens)
    parts = text.split(run)
    out = parts[0]
    for k, part in enumerate(parts[1:], start=1):
        out += f'[{k}]' + part
    return out


def _codebook_tokens(cfg) -> List[str]:
    codebook = cfg.get('codebook') or cfg.model.get('codebook') or {}
    return codebook_cfg_tokens(dict(codebook))


def browse(cfg, split: str, out_dir: str, indices: Optional[List[int]] = None, num: int = 20,
           keep_going: bool = False) -> List[str]:
    """Build the split's dataset and write one overlay per sample.

    Args:
        cfg (Config): The loaded config.
        split (str): ``'train'``, ``'val'`` or ``'test'``.
        out_dir (str): Output folder (created).
        indices (list[int], optional): Which samples; default the first ``num``.
        num (int): How many samples when ``indices`` is None. Defaults to 20.
        keep_going (bool): Print a failing sample's error and continue. Defaults to False.

    Returns:
        list[str]: The written PNG paths.

    Raises:
        SystemExit: The split has no dataset, or a sample fails and ``keep_going`` is False.
    """
    from PIL import Image

    loader = cfg.get(SPLIT_KEYS[split])
    if not loader or not loader.get('dataset'):
        raise SystemExit(f'browse_dataset: the config has no {SPLIT_KEYS[split]}.dataset')
    dataset = DATASETS.build(loader['dataset'])
    tokens = _codebook_tokens(cfg)
    if indices is None:
        indices = list(range(min(num, len(dataset))))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for index in indices:
        try:
            sample = dataset[index]['data_samples']
            meta = sample.metainfo
            image = Image.open(meta['img_path']).convert('RGB')
        except Exception as err:  # noqa: BLE001 - reported with the sample index, then re-raised
            message = f'sample {index}: {type(err).__name__}: {err}'
            if not keep_going:
                raise SystemExit(f'browse_dataset: {message}') from err
            print(f'browse_dataset: skipped {message}')
            continue
        masks = np.zeros((0, image.height, image.width), dtype=bool)
        if 'gt_instances' in sample and 'masks' in sample.gt_instances:
            masks = sample.gt_instances.masks.numpy().astype(bool)
        answer = mark_targets(meta['answer'], tokens)
        canvas = render_mask_overlay(image, masks, meta['question'], answer)
        stem = osp.splitext(osp.basename(meta['img_path']))[0]
        path = osp.join(out_dir, f'{index:06d}_{stem}.png')
        canvas.save(path)
        written.append(path)
        print(f'{path}: {len(masks)} target(s) | Q: {meta["question"]} | A: {answer}')
    return written


@cli_main
def main(argv=None) -> None:
    """Load the config, build the dataset and write the overlays.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.
    """
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise SystemExit(f'browse_dataset: config file {args.config!r} not found')
    register_all_modules(init_default_scope=True)
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    name = osp.splitext(osp.basename(args.config))[0]
    out_dir = args.output_dir or osp.join('work_dirs', 'browse', name, args.split)
    written = browse(cfg, args.split, out_dir, args.indices, args.num, args.keep_going)
    print(f'wrote {len(written)} overlay(s) to {out_dir}')


if __name__ == '__main__':
    main()
