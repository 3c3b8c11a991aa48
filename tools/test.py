"""Test a checkpoint and print every metric: ``python tools/test.py CONFIG CHECKPOINT``.

The checkpoint is loaded with pixellm's allow-listed ``weights_only`` loader (see
``pixellm.engine.checkpoint``); ``--trust-checkpoint`` lifts the allow-list for a trusted file.
"""
import argparse
import json
import os
import os.path as osp
import sys

# Run from a checkout without installing: the repository root holds the pixellm package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from pixellm.engine.checkpoint import atomic_write_text  # noqa: E402
from pixellm.models.export import CONFIG_FILE as EXPORT_CONFIG_FILE  # noqa: E402
from pixellm.engine.runner_utils import (add_common_arguments, build_runner,  # noqa: E402
                                         check_data_or_exit, format_metrics, load_tool_config,
                                         set_show_dir, release_runner, shutdown_distributed)


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Test a pixellm checkpoint')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file, or a folder written by '
                        'tools/model_converters/export_hf.py (the model then comes from the '
                        'folder; the config gives data and metric)')
    parser.add_argument('--show-dir', help='write mask overlay PNGs of the predictions here')
    parser.add_argument('--out', help='also write the metrics to this json file')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Build the runner, load the checkpoint, test, and print the metrics.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        dict: The metrics returned by ``runner.test()``.
    """
    args = parse_args(argv)
    exported = osp.isfile(osp.join(args.checkpoint, EXPORT_CONFIG_FILE))
    if not exported and not osp.isfile(args.checkpoint):
        hint = ''
        if osp.isdir(args.checkpoint):
            if any(name.endswith('model_states.pt') for name in os.listdir(args.checkpoint)):
                hint = (' as a checkpoint file: it is a DeepSpeed checkpoint folder; turn it into '
                        'a .pth with tools/model_converters/deepspeed_to_pth.py')
            else:
                hint = (f' (a folder needs {EXPORT_CONFIG_FILE}: pass a .pth checkpoint or a '
                        'folder written by tools/model_converters/export_hf.py)')
        raise SystemExit(f'tools/test.py: checkpoint {args.checkpoint!r} does not exist{hint}.')
    cfg = load_tool_config(args)
    if exported:
        # The exported folder holds the whole model (merged LLM, tokenizer, other weights).
        cfg.model = dict(type='ExportedPixelLM', folder=osp.abspath(args.checkpoint))
        cfg.load_from = None
    else:
        cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir:
        set_show_dir(cfg, osp.abspath(args.show_dir))
    check_data_or_exit(cfg, ('test_dataloader', ), 'tools/test.py')

    runner = build_runner(cfg)
    metrics = runner.test()
    rank = runner.rank
    release_runner(runner)
    del runner  # its model wrapper holds the process group, which the teardown must free
    if rank == 0:
        print(format_metrics(metrics, title=f'Test metrics of {args.checkpoint}'), flush=True)
        if args.out:
            out_dir = osp.dirname(osp.abspath(args.out))
            os.makedirs(out_dir, exist_ok=True)
            atomic_write_text(json.dumps(
                {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()},
                indent=2), args.out)
    shutdown_distributed()
    return metrics


if __name__ == '__main__':
    main()
