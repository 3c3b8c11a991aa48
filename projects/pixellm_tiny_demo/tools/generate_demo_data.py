"""Write the synthetic MUSE demo dataset (coloured shapes, real MUSE json format).

Example::

    python projects/pixellm_tiny_demo/tools/generate_demo_data.py --out data/muse_demo --num-train 1200 --num-val 150

An existing complete dataset written with the same arguments is reused unless ``--overwrite``.
The defaults (1200 train / 150 val images of 160-256 px) take about 10 s on one CPU core and
about 12 MB of disk.
"""
import argparse
import json
import os.path as osp
import sys
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from projects.pixellm_tiny_demo.pixellm_tiny_demo.muse_scenes import generate_muse_scenes  # noqa: E402,E501


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.

    Returns:
        argparse.Namespace: The arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/muse_demo', help='output folder')
    parser.add_argument('--num-train', type=int, default=1200, help='training images')
    parser.add_argument('--num-val', type=int, default=150, help='validation images')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument('--min-size', type=int, default=160, help='smallest image side (px)')
    parser.add_argument('--max-size', type=int, default=256, help='largest image side (px)')
    parser.add_argument('--overwrite', action='store_true',
                        help='regenerate even if a complete dataset exists')
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Generate (or reuse) the dataset and print what was written.

    Args:
        argv (list[str], optional): Arguments; None reads ``sys.argv``.

    Returns:
        dict: The paths returned by ``generate_muse_scenes``.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    paths = generate_muse_scenes(args.out, num_train=args.num_train, num_val=args.num_val,
                                 seed=args.seed, min_size=args.min_size, max_size=args.max_size,
                                 overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    action = 'reused existing' if paths['reused'] else f'wrote in {elapsed:.1f} s'
    print(f'synthetic MUSE dataset at {paths["root"]} ({action})')
    for key in ('train_ann', 'val_ann'):
        with open(paths[key]) as f:
            records = json.load(f)
        num_questions = sum(len(r['questions']) for r in records)
        print(f'  {paths[key]}: {len(records)} images, {num_questions} questions')
    print(f'  images: {paths["img_dir"]}')
    return paths


if __name__ == '__main__':
    main()
