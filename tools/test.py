"""Test a checkpoint and print every metric: ``python tools/test.py CONFIG CHECKPOINT``.

The checkpoint is loaded with pixellm's allow-listed ``weights_only`` loader (see
``pixellm.engine.checkpoint``); ``--trust-checkpoint`` lifts the allow-list for a trusted file.

Each run writes its records into its own folder ``<work_dir>/<timestamp>/``: the log, the config
as run (``<config name>.py``) and the metrics (``test_metrics.json``; ``--out`` writes a copy
where asked). The training run's config dump ``<work_dir>/<config name>.py`` is left as it is.
``--dump FILE.json`` also writes every question's prediction (image path, question, generated
answer, each target's label and COCO RLE mask; see ``pixellm.evaluation.DumpPredictions``).

The config's types, its data paths and the checkpoint are checked before the runner is built; a
mistake ends the run with one line, ``error: <file>: <what>``, and exit status 2, before anything
is written; ``--debug`` (or ``PIXELLM_DEBUG=1``) shows the traceback instead.
"""
import argparse
import json
import os
import os.path as osp
import sys

import numpy as np
import torch

# Run from a checkout without installing: the repository root holds the pixellm package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from pixellm.engine.checkpoint import atomic_write_text  # noqa: E402
from pixellm.engine.hooks import codebook_tokens_of  # noqa: E402
from pixellm.engine.preflight import check_config_types, check_run_checkpoints  # noqa: E402
from pixellm.engine.distributed import release_runner, shutdown_distributed  # noqa: E402
from pixellm.engine.runner_build import build_runner, format_metrics  # noqa: E402
from pixellm.engine.tool_config import (add_common_arguments, check_data_or_exit,  # noqa: E402
                                        load_tool_config, set_show_dir)
from pixellm.evaluation import DumpPredictions  # noqa: E402
from pixellm.models.export import CONFIG_FILE as EXPORT_CONFIG_FILE  # noqa: E402
from pixellm.utils.cli import UserError, cli_main  # noqa: E402

METRICS_FILE = 'test_metrics.json'


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
    parser.add_argument('--dump', metavar='FILE.json',
                        help='write every prediction here: img_path, question, answer and per '
                        'target its label and COCO RLE mask')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def _json_value(value):
    """A metric value as json writes it: numbers (numpy scalars, as mmseg's IoUMetric returns,
    and one-element tensors included) as floats, anything else unchanged. A float32 keeps its
    shortest decimal form (IoUMetric's 19.81, not 19.809999465942383)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.floating):
        value = float(str(value))
    elif isinstance(value, np.generic):
        value = value.item()
    return float(value) if isinstance(value, (int, float)) else value


def _write_metrics(metrics: dict, path: str) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    atomic_write_text(json.dumps({k: _json_value(v) for k, v in metrics.items()}, indent=2),
                      path)


@cli_main
def main(argv=None) -> dict:
    """Check the config and checkpoint, build the runner, test, and print the metrics.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        dict: The metrics returned by ``runner.test()``.

    Raises:
        SystemExit: A user's mistake (status 2) or another error (status 1), reported in one line
            (see ``pixellm.utils.cli``).
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
        raise UserError(f'checkpoint does not exist{hint}', args.checkpoint)
    cfg = load_tool_config(args)
    check_config_types(cfg, args.config)
    if exported:
        # The exported folder holds the whole model (merged LLM, tokenizer, other weights).
        cfg.model = dict(type='ExportedPixelLM', folder=osp.abspath(args.checkpoint))
        cfg.load_from = None
    else:
        cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir:
        set_show_dir(cfg, osp.abspath(args.show_dir))
    if args.dump and not args.dump.endswith('.json'):
        raise UserError('--dump writes json: give a file name ending in .json', args.dump)
    check_data_or_exit(cfg, ('test_dataloader', ), 'tools/test.py')
    check_run_checkpoints(cfg)

    runner = build_runner(cfg, records_in_log_dir=True)
    if args.dump:
        runner.test_loop.evaluator.metrics.append(DumpPredictions(
            out_file=osp.abspath(args.dump), codebook_tokens=codebook_tokens_of(runner)))
    metrics = runner.test()
    rank, log_dir = runner.rank, runner.log_dir
    release_runner(runner)
    del runner  # its model wrapper holds the process group, which the teardown must free
    if rank == 0:
        _write_metrics(metrics, osp.join(log_dir, METRICS_FILE))
        if args.out:
            _write_metrics(metrics, args.out)
        print(f'Records of this test (log, config, {METRICS_FILE}): {log_dir}', flush=True)
        print(format_metrics(metrics, title=f'Test metrics of {args.checkpoint}'), flush=True)
    shutdown_distributed()
    return metrics


if __name__ == '__main__':
    main()
