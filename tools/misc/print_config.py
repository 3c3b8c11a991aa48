"""Print a config as the runner sees it: ``python tools/misc/print_config.py CONFIG``.

Base configs are merged, ``custom_imports`` are applied (so plugin types resolve) and
``--cfg-options`` overrides are in place; ``--save`` also writes the result to a file.
"""
import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))

from pixellm.utils.cli import add_debug_argument, cli_main  # noqa: E402
from pixellm.utils.config import load_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Print the full config')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
        help='override config entries, e.g. train_cfg.max_iters=100')
    parser.add_argument('--save', metavar='PATH',
                        help='also write the config to PATH (.py, .json or .yaml)')
    add_debug_argument(parser)
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> None:
    """Load the config and print it.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.
    """
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise SystemExit(f'tools/misc/print_config.py: config file {args.config!r} not found')
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    print(f'Config (path: {args.config}):\n{cfg.pretty_text}')
    if args.save:
        cfg.dump(args.save)
        print(f'saved to {args.save}')


if __name__ == '__main__':
    main()
