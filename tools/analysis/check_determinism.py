"""Train a config a few steps in several fresh processes and say whether they are bit-identical.

Usage::

    python tools/analysis/check_determinism.py CONFIG [--iters 4] [--runs 2] [--resume-at 2]
        [--threads 2 1] [--work-dir DIR] [--cfg-options KEY=VALUE ...]

Each run is one ``tools/train.py``-style training of ``--iters`` iterations in a new process, with
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to one of ``--threads`` and
:class:`~pixellm.engine.hooks.GradDigestHook` recording a digest of every trained weight and
gradient at each step. With ``--resume-at K`` every run after the first of a thread count stops
after iteration ``K`` (its checkpoint) and a second process resumes it to ``--iters``, as
``tools/train.py --resume`` would. The first run of each thread count is the reference of the
runs with that count; the table names, for each run, the first step whose gradients (or, failing
that, the weights before it) differ from its reference, how many and which tensors. Runs with
different thread counts are compared too, for information: CPU sums split by thread, so their
results differ in the last bits.

Exit status 0 when every run matches its reference, 1 when one does not (or a run crashed), 2 for a
user's mistake (one line, as in ``tools/train.py``).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, List, Optional

# Run from a checkout without installing: the repository root holds the pixellm package.
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)

from pixellm.engine.preflight import check_config_types, check_run_checkpoints  # noqa: E402
from pixellm.engine.runner_build import build_runner  # noqa: E402
from pixellm.engine.tool_config import (add_common_arguments, apply_resume,  # noqa: E402
                                        check_data_or_exit, enable_resume_safety,
                                        load_tool_config)
from pixellm.utils.cli import UserError, cli_main  # noqa: E402

DIGESTS = 'grad_digests.jsonl'


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments; ``None`` reads ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--iters', type=int, default=4, help='iterations per run (default 4)')
    parser.add_argument('--runs', type=int, default=2,
                        help='runs per thread count, the first being the reference (default 2)')
    parser.add_argument('--resume-at', type=int, default=None, metavar='K',
                        help='interrupt every run but the reference after iteration K and '
                        'resume it in a new process')
    parser.add_argument('--threads', type=int, nargs='+', default=None, metavar='N',
                        help='intra-op thread counts to run with (default: this machine\'s '
                        'default, as torch.get_num_threads() gives it)')
    parser.add_argument('--train-once', metavar='STOP', type=int, default=None,
                        help=argparse.SUPPRESS)  # one training process, launched by the check
    parser.add_argument('--resume', default=None, help=argparse.SUPPRESS)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.runs < 1:
        parser.error('--iters and --runs must be at least 1')
    if args.resume_at is not None and not 0 < args.resume_at < args.iters:
        parser.error(f'--resume-at must lie between 1 and --iters - 1 = {args.iters - 1}')
    if args.work_dir is None:
        args.work_dir = osp.join('work_dirs', 'check_determinism',
                                 osp.splitext(osp.basename(args.config))[0])
    return args


def train_once(args: argparse.Namespace) -> None:
    """Train ``args.config`` up to iteration ``args.train_once`` with :class:`GradDigestHook`.

    Args:
        args (argparse.Namespace): Parsed arguments; ``work_dir`` is the run's folder and
            ``resume`` an optional checkpoint to resume from.
    """
    cfg = load_tool_config(args)
    check_config_types(cfg, args.config)
    if cfg.get('train_cfg') is None:
        raise UserError('the config has no train_cfg to train with', args.config)
    cfg.train_cfg.max_iters = args.train_once
    # One checkpoint, at the last iteration: the one an interrupted run resumes from.
    default_hooks = cfg.get('default_hooks') or {}
    checkpoint = dict(default_hooks.get('checkpoint') or dict(type='CheckpointHook'))
    checkpoint.update(by_epoch=False, interval=args.train_once)
    cfg.default_hooks = dict(default_hooks, checkpoint=checkpoint)
    apply_resume(cfg, args.resume)
    enable_resume_safety(cfg)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='pixellm.GradDigestHook',
                                                      out_file=DIGESTS)]
    check_data_or_exit(cfg, ('train_dataloader', 'val_dataloader'),
                       'tools/analysis/check_determinism.py')
    check_run_checkpoints(cfg)
    build_runner(cfg).train()


def read_digests(path: str) -> Dict:
    """The steps and final weights recorded by :class:`GradDigestHook` in ``path``.

    Args:
        path (str): A ``grad_digests.jsonl`` file (a resumed run appends to its first part's).

    Returns:
        dict: ``steps`` (iteration -> record), ``final`` (name -> digest) and ``threads``
        (the intra-op thread counts of the processes that wrote it).
    """
    steps, final, threads = {}, {}, []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if 'numerics' in record:
                threads.append(record['numerics']['threads'])
            elif 'final' in record:
                final = record['final']
            else:
                steps[record['iter']] = record
    return dict(steps=steps, final=final, threads=threads)


def _differing(a: Dict[str, str], b: Dict[str, str]) -> List[str]:
    return sorted(name for name in set(a) | set(b) if a.get(name) != b.get(name))


def compare(run: Dict, ref: Dict) -> Optional[str]:
    """Where ``run`` first departs from ``ref``, or ``None`` when the two are bit-identical.

    Args:
        run (dict): :func:`read_digests` of one run.
        ref (dict): :func:`read_digests` of its reference.

    Returns:
        str or None: E.g. ``'step 3: 212 of 331 gradients differ (first: llm.x.weight)'``.
    """
    for step in sorted(set(ref['steps']) | set(run['steps'])):
        if step not in run['steps'] or step not in ref['steps']:
            return f'step {step}: recorded by one run only'
        for what in ('weights', 'grads'):
            theirs, ours = ref['steps'][step][what], run['steps'][step][what]
            names = _differing(theirs, ours)
            if names:
                label = 'weights before the update' if what == 'weights' else 'gradients'
                return (f'step {step}: {len(names)} of {len(theirs)} {label} differ '
                        f'(first: {names[0]})')
    names = _differing(ref['final'], run['final'])
    if names:
        return f'final weights: {len(names)} of {len(ref["final"])} differ (first: {names[0]})'
    return None


def raw_cfg_options(argv: List[str]) -> List[str]:
    """The ``KEY=VALUE`` words that follow ``--cfg-options`` in ``argv``, as the user wrote them."""
    if '--cfg-options' not in argv:
        return []
    words = argv[argv.index('--cfg-options') + 1:]
    ends = [i for i, word in enumerate(words) if word.startswith('--')]
    return words[:ends[0]] if ends else words


def launch(args: argparse.Namespace, work_dir: str, stop: int, threads: Optional[int],
           resume: Optional[str] = None) -> None:
    """Run :func:`train_once` in a new process; raise its last line when it fails."""
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, osp.abspath(__file__), args.config, '--work-dir', work_dir,
           '--train-once', str(stop)]
    if resume:
        cmd += ['--resume', resume]
    if args.raw_cfg_options:
        cmd += ['--cfg-options', *args.raw_cfg_options]
    if args.trust_checkpoint:
        cmd.append('--trust-checkpoint')
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ['(no output)']
        error = UserError if proc.returncode == 2 else RuntimeError
        raise error(f'training run {work_dir} failed: {lines[-1]}')


@cli_main
def main(argv=None) -> int:
    """Run the check (or, with the internal ``--train-once``, one of its training runs).

    Args:
        argv (list[str], optional): Command-line arguments; ``None`` reads ``sys.argv``.

    Returns:
        int: 0 when every run is bit-identical to its reference, else 1.
    """
    args = parse_args(argv)
    args.raw_cfg_options = raw_cfg_options(list(sys.argv[1:] if argv is None else argv))
    if args.train_once is not None:
        train_once(args)
        return 0
    import torch
    thread_counts = args.threads or [torch.get_num_threads()]
    if os.path.exists(args.work_dir) and os.listdir(args.work_dir):
        raise UserError('the work dir is not empty; give a new --work-dir', args.work_dir)
    failed, refs = False, {}
    for threads in thread_counts:
        for index in range(args.runs):
            work = osp.join(args.work_dir, f'threads{threads}_run{index}')
            resumed = args.resume_at is not None and index > 0
            if resumed:
                launch(args, work, args.resume_at, threads)
                launch(args, work, args.iters, threads,
                       resume=osp.join(work, f'iter_{args.resume_at}.pth'))
            else:
                launch(args, work, args.iters, threads)
            digests = read_digests(osp.join(work, DIGESTS))
            mode = f'resumed after {args.resume_at}' if resumed else 'uninterrupted'
            if threads not in refs:
                refs[threads] = digests
                verdict = 'reference'
            else:
                where = compare(digests, refs[threads])
                failed |= where is not None
                verdict = 'bit-identical' if where is None else f'DIFFERS at {where}'
            print(f'threads {threads} run {index} ({mode}; torch threads '
                  f'{digests["threads"]}): {verdict}', flush=True)
    base = thread_counts[0]
    for threads in thread_counts[1:]:
        where = compare(refs[threads], refs[base])
        print(f'threads {threads} against threads {base} (expected to differ): '
              + ('bit-identical' if where is None else f'differ from {where}'))
    print('every run is bit-identical to the reference of its thread count' if not failed
          else 'NOT DETERMINISTIC: a run differs from the reference of its thread count')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
