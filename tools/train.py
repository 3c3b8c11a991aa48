"""Train a model from a config: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]``.

Checkpoints are written atomically and carry the random state, so ``--resume`` continues exactly
where an interrupted run stopped (see ``pixellm.engine``). ``--deepspeed zero2|zero2_offload|zero3``
switches to DeepSpeed (``configs/deepspeed/``) and ``--fsdp`` to PyTorch FSDP; launch either with
``tools/dist_train.sh``.

Before the runner is built (and so before anything is written into the work dir or the
environment is printed), the config's types and keyword arguments, its data paths and the
checkpoint of ``--resume`` / ``load_from`` are checked (``pixellm.engine.preflight``). A mistake
ends the run with one line, ``error: <file>: <what>``, and exit status 2; ``--debug`` (or
``PIXELLM_DEBUG=1``) shows the traceback instead (``pixellm.utils.cli``).
"""
import argparse
import os.path as osp
import sys

from mmengine.logging import print_log

# Run from a checkout without installing: the repository root holds the pixellm package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from pixellm.engine.preflight import check_config_types, check_run_checkpoints  # noqa: E402
from pixellm.engine.deepspeed_config import apply_deepspeed  # noqa: E402
from pixellm.engine.distributed import release_runner, shutdown_distributed  # noqa: E402
from pixellm.engine.fsdp import apply_fsdp  # noqa: E402
from pixellm.engine.runner_build import build_runner  # noqa: E402
from pixellm.engine.tool_config import (add_common_arguments, apply_amp,  # noqa: E402
                                        apply_resume, apply_seed, check_data_or_exit,
                                        enable_resume_safety, load_tool_config)
from pixellm.utils.cli import cli_main  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description='Train a pixellm model')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--resume', nargs='?', const='auto', default=None, metavar='CKPT|auto',
        help='resume from CKPT, or with no value (or "auto") from <work-dir>/last_checkpoint')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision with AmpOptimWrapper (bfloat16 unless the config '
                        'sets a dtype); needs a CUDA/NPU/MLU/MUSA device')
    parser.add_argument('--seed', type=int, default=None, help='random seed (randomness.seed)')
    parser.add_argument(
        '--deepspeed', metavar='zero2|zero2_offload|zero3|JSON',
        help='train with DeepSpeed through mmengine\'s FlexibleRunner: a config from '
        'configs/deepspeed/ or a DeepSpeed JSON file; "auto" values come from the config. '
        'Needs a launcher (tools/dist_train.sh)')
    parser.add_argument(
        '--fsdp', action='store_true',
        help='train with PyTorch FSDP through mmengine\'s FlexibleRunner (parameters, gradients '
        'and optimizer states sharded; one unit per transformer block the model\'s components '
        'declare). Needs a launcher')
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.fsdp and args.deepspeed:
        parser.error('--fsdp and --deepspeed are two ways to shard: choose one')
    return args


@cli_main
def main(argv=None) -> None:
    """Check the config and checkpoint, build the runner and train.

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Raises:
        SystemExit: A user's mistake (status 2) or another error (status 1), reported in one line
            (see ``pixellm.utils.cli``).
    """
    args = parse_args(argv)
    cfg = load_tool_config(args)
    # The user's config, before this tool's own edits add runner and strategy types.
    check_config_types(cfg, args.config)
    apply_resume(cfg, args.resume)
    apply_seed(cfg, args.seed)
    if args.amp:
        try:
            apply_amp(cfg)
        except (RuntimeError, ValueError) as err:
            raise SystemExit(f'tools/train.py: {err}') from err
    notes = []
    if args.deepspeed:
        # After --amp: a bfloat16 AmpOptimWrapper turns on DeepSpeed's bf16.
        try:
            notes += apply_deepspeed(cfg, args.deepspeed)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f'tools/train.py: {err}') from err
    if args.fsdp:
        try:
            notes += apply_fsdp(cfg)
        except ValueError as err:
            raise SystemExit(f'tools/train.py: {err}') from err
    notes += enable_resume_safety(cfg)
    # The training loop builds the validation loop too, so both datasets must be there.
    check_data_or_exit(cfg, ('train_dataloader', 'val_dataloader'), 'tools/train.py')
    check_run_checkpoints(cfg)

    runner = build_runner(cfg)
    for note in notes:
        print_log(f'tools/train.py: {note}', logger='current')
    runner.train()
    release_runner(runner)
    del runner  # its model wrapper holds the process group, which the teardown must free
    shutdown_distributed()


if __name__ == '__main__':
    main()
