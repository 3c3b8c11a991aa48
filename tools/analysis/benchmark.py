"""Benchmark a config's model (PixelLM, LISA) at full size with random weights: training and
inference speed, peak memory and MFU against a measured matmul peak; or, with ``--flops-only``,
the FLOPs of both steps counted on the meta device.

Usage:
    python tools/analysis/benchmark.py projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py --device cpu \\
        --dtype fp32 --steps 3 --out work_dirs/benchmark_tiny.json

FLOPs are model FLOPs counted analytically from the built model's shapes by
:mod:`pixellm.analysis.flops` (its docstring gives the convention; docs/benchmark.md the formulas).

MFU = model FLOPs per second / the peak measured here with one large matmul (bf16 on CUDA,
the ``--dtype`` on CPU), not a datasheet figure.
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import resource
import statistics
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Sequence

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from pixellm.analysis.flops import generate_flops, train_step_flops  # noqa: E402
from pixellm.utils.cli import UserError, add_debug_argument, cli_main  # noqa: E402

QUESTION = 'Please segment every object the question asks about.'


# ----------------------------------------------------------------------------- synthetic data
def synthetic_batch(model, batch: int, seq_len: int, targets: int, seed: int = 0):
    """``batch`` full-size images with conversations of exactly ``seq_len`` LLM tokens.

    Each answer names ``targets`` targets with the codebook's tokens, then filler words up to the
    token budget (truncation cuts the filler); gt masks are random. The model's tokenizer is the
    config's, or the shipped tiny one padded to the vocabulary size when the config's would need
    a download (:func:`pixellm.models.meta_build.offline_model_cfg`), so every id is valid.

    Returns:
        tuple: ``(images, samples)`` for ``model.data_preprocessor``.
    """
    from mmengine.structures import InstanceData

    from pixellm.structures import PixelLMDataSample
    size = model.data_preprocessor.size  # the input size: the mask encoder's for LISA
    image_tokens = model.llm_image_grid ** 2
    text_budget = seq_len - (image_tokens - 1)  # the image placeholder counts as one id
    g = torch.Generator().manual_seed(seed)
    answer = 'They are ' + ' and '.join([model.codebook.target_text] * targets) + '.' \
        + ' filler' * seq_len
    text = model.text_processor
    user = dict(role='user', content=text.image_turn(QUESTION))
    messages = [user, dict(role='assistant', content=answer)]
    try:
        enc = text.encode_conversation(messages, max_length=text_budget)
    except ValueError as err:
        raise UserError(f'--seq-len {seq_len} ({image_tokens} image tokens) leaves no room for '
                        f'the answer; raise it ({err})') from err
    if len(enc['input_ids']) != text_budget:
        raise ValueError(f'could not fill {seq_len} tokens ({text_budget} text ids): got '
                         f'{len(enc["input_ids"])}')
    written = model.codebook.count_targets(enc['input_ids'][None], strict=False)[0]
    if written != targets:
        raise UserError(f'--seq-len {seq_len} leaves room for {written} of {targets} targets')
    prompt = text.encode_prompt([user])
    images, samples = [], []
    for i in range(batch):
        sample = PixelLMDataSample(metainfo=dict(ori_shape=(size, size), img_path=f'synth{i}',
                                                 question=QUESTION, answer=answer))
        sample.input_ids = enc['input_ids'].clone()
        sample.labels = enc['labels'].clone()
        sample.prompt_ids = prompt.clone()
        sample.gt_instances = InstanceData(
            masks=torch.rand(targets, size, size, generator=g) > 0.5)
        images.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g))
        samples.append(sample)
    return images, samples


# ----------------------------------------------------------------------------- measurement
def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def measure_peak_tflops(device: str, dtype: torch.dtype, size: int, reps: int = 5) -> float:
    """TFLOP/s of a ``size``-square matmul on ``device`` in ``dtype`` (best of ``reps``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    _sync(device)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e12


def peak_memory_bytes(device: str) -> int:
    """Peak allocated CUDA memory, or the process's peak RSS on the CPU (Linux KiB -> bytes)."""
    if device == 'cuda':
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _stats(times: Sequence[float]) -> Dict[str, float]:
    ordered = sorted(times)

    def pct(q):
        return ordered[min(len(ordered) - 1, int(math.ceil(q * len(ordered))) - 1)]

    return dict(mean=statistics.fmean(times), p50=statistics.median(times), p90=pct(0.9))


def _timed(fn, steps: int, warmup: int, device: str) -> List[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def build_optim_wrapper(model, cfg, device: str):
    """The config's optimizer wrapper, stepping every iteration (``accumulative_counts=1``).

    On the CPU an ``AmpOptimWrapper`` (CUDA only in mmengine) becomes an ``OptimWrapper`` with
    the same optimizer and clipping; bf16 then comes from ``torch.autocast`` in the step.
    """
    from mmengine.optim import build_optim_wrapper as build
    if cfg.get('optim_wrapper') is None:
        raise UserError('the config has no optim_wrapper; benchmark a training config')
    wrapper = copy.deepcopy(cfg.optim_wrapper.to_dict() if hasattr(cfg.optim_wrapper, 'to_dict')
                            else dict(cfg.optim_wrapper))
    wrapper.pop('accumulative_counts', None)
    if device == 'cpu' and wrapper.get('type') == 'AmpOptimWrapper':
        wrapper['type'] = 'OptimWrapper'
        for key in ('dtype', 'loss_scale', 'use_fsdp'):
            wrapper.pop(key, None)
    return build(model, wrapper)


def _autocast(device: str, dtype: torch.dtype, wrapper):
    from contextlib import nullcontext
    if dtype == torch.float32 or type(wrapper).__name__ == 'AmpOptimWrapper':
        return nullcontext()
    return torch.autocast(device, dtype=dtype)


def bench_train(model, cfg, args, device: str, dtype: torch.dtype) -> Dict:
    """Time ``model.train_step`` (preprocess, forward, backward, optimizer step)."""
    wrapper = build_optim_wrapper(model, cfg, device)
    model.train()
    images, samples = synthetic_batch(model, args.batch_size, args.seq_len, args.targets)

    def step():
        data = dict(inputs=[i.clone() for i in images],
                    data_samples=[copy.deepcopy(s) for s in samples])
        with _autocast(device, dtype, wrapper):
            model.train_step(data, wrapper)

    times = _timed(step, args.steps, args.warmup, device)
    return _report('train', times, synthetic_train_flops(model, args), args.batch_size,
                   args.batch_size * args.seq_len,
                   dict(seq_len=args.seq_len, targets_per_sample=args.targets))


def synthetic_train_flops(model, args) -> Dict[str, float]:
    """FLOPs of a training step on ``--batch-size`` synthetic sequences of ``--seq-len`` tokens
    with ``--targets`` targets each."""
    return train_step_flops(model, args.batch_size, args.seq_len, args.targets * args.batch_size)


def synthetic_question(model, args):
    """The benchmark's question: ``(images, samples, prompt_len)`` of one synthetic image and
    prompt; fills in the default ``--new-tokens``."""
    if args.new_tokens is None:
        args.new_tokens = default_new_tokens(model, args.targets)
    images, samples = synthetic_batch(model, 1, args.seq_len, args.targets)
    return images, samples, prompt_length(model, samples[0])


def answer_ids(model, targets: int) -> List[int]:
    """Ids of ``'<target> and <target> ...'`` naming ``targets`` targets."""
    return model.tokenizer(' and '.join([model.codebook.target_text] * targets),
                           add_special_tokens=False).input_ids


def fitting_targets(model, targets: int, new_tokens: int) -> int:
    """How many of ``targets`` targets :func:`answer_ids` writes in ``new_tokens - 1`` generated
    tokens (the last generated token's state is never read)."""
    for n in range(targets, 0, -1):
        if len(answer_ids(model, n)) < new_tokens:
            return n
    return 0


def forced_answer_ids(model, targets: int, new_tokens: int) -> List[int]:
    """:func:`answer_ids` for the :func:`fitting_targets` of ``targets``."""
    n = fitting_targets(model, targets, new_tokens)
    return answer_ids(model, n) if n else []


def default_new_tokens(model, targets: int) -> int:
    """Room for every target's tokens, and at least 32 tokens of generation."""
    return max(32, len(answer_ids(model, targets)) + 1)


def prompt_length(model, sample) -> int:
    """LLM tokens of a synthetic sample's prompt, the image placeholder expanded."""
    return len(sample.prompt_ids) - 1 + model.llm_image_grid ** 2


class GenerationSteer:
    """A logits processor of ``model.generation_cfg`` that forces the first generated ids and
    masks out EOS, installed for as long as the object lives (until :meth:`remove`).

    Args:
        model: A built PixelLM.
        forced (list[int]): Ids the first generated tokens are forced to, one per step.
    """

    def __init__(self, model, forced: Sequence[int]) -> None:
        from transformers import LogitsProcessorList
        self.forced = list(forced)
        self.eos = model.eos_token_id
        self.calls = 0
        self.model = model
        self.previous = model.generation_cfg
        model.generation_cfg = dict(self.previous,
                                    logits_processor=LogitsProcessorList([self._process]))

    def reset(self) -> None:
        """Start a new generation."""
        self.calls = 0

    def remove(self) -> None:
        """Give the model its own generation options back."""
        self.model.generation_cfg = self.previous

    def _process(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        low = torch.finfo(scores.dtype).min
        if self.calls < len(self.forced):
            keep = scores[:, self.forced[self.calls]].clone()
            scores.fill_(low)
            scores[:, self.forced[self.calls]] = keep
        scores[:, self.eos] = low
        self.calls += 1
        return scores


def bench_infer(model, args, device: str, dtype: torch.dtype) -> Dict:
    """Time ``model.test_step`` on one image + question with ``--new-tokens`` generated tokens.

    Random weights would stop at a random EOS and rarely write a codebook token, so a logits
    processor steers greedy decoding: the first tokens are forced to name as many of
    ``--targets`` targets as fit (:func:`forced_answer_ids`), and EOS is masked out afterwards, so
    every run generates exactly ``--new-tokens`` tokens and decodes the same number of masks.
    It only edits logits; every forward still runs in full.
    """
    model.eval()
    images, samples, prompt_len = synthetic_question(model, args)
    model.max_new_tokens = args.new_tokens
    steer = GenerationSteer(model, forced_answer_ids(model, args.targets, args.new_tokens))
    result = {}

    def step():
        steer.reset()
        data = dict(inputs=[i.clone() for i in images],
                    data_samples=[copy.deepcopy(s) for s in samples])
        with torch.no_grad(), _autocast(device, dtype, None):
            out = model.test_step(data)
        result['targets'] = len(out[0].pred_instances)

    try:
        times = _timed(step, args.steps, args.warmup, device)
    finally:
        steer.remove()
    flops = generate_flops(model, prompt_len, args.new_tokens, result['targets'])
    return _report('infer', times, flops, 1, args.new_tokens,
                   dict(prompt_len=prompt_len, new_tokens=args.new_tokens,
                        predicted_masks=result['targets']))


# Steps each mode is profiled for (after the timed runs, so caches and kernels are warm).
PROFILE_STEPS = 2
# Module kinds whose time the profile sums (record_function ranges around their forward). The
# ``llm`` part is the decoder stack, which training and transformers' generate both call; the LM
# head runs outside it.
PROFILED_PARTS = ('vision_encoder', 'mask_encoder', 'projector', 'mask_projector', 'llm',
                  'pixel_decoder')


def _label_parts(model):
    """Forward pre/post hooks that open a ``record_function`` range per part of the model."""
    from torch.profiler import record_function
    handles = []
    for name in PROFILED_PARTS:
        part = getattr(model, name, None)
        if name == 'llm' and part is not None:
            part = part.hf_model.get_decoder()
        if part is None:
            continue
        ranges = []

        def pre(module, inputs, name=name, ranges=ranges):
            ranges.append(record_function(f'part::{name}'))
            ranges[-1].__enter__()

        def post(module, inputs, output, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        handles += [part.register_forward_pre_hook(pre), part.register_forward_hook(post)]
    return handles


def profile_modes(model, cfg, args, device: str, dtype: torch.dtype) -> None:
    """Profile :data:`PROFILE_STEPS` steps of each benchmarked mode; write the top operators and
    the part totals."""
    from torch.profiler import ProfilerActivity, profile
    os.makedirs(args.profile, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])
    sort = 'self_cuda_time_total' if device == 'cuda' else 'self_cpu_time_total'
    modes = ('train', 'infer') if args.mode == 'both' else (args.mode, )
    for mode in modes:
        steps, warmup = args.steps, args.warmup
        args.steps, args.warmup = PROFILE_STEPS, 0
        handles = _label_parts(model)
        try:
            with profile(activities=activities, record_shapes=False) as prof:
                if mode == 'train':
                    bench_train(model, cfg, args, device, dtype)
                else:
                    bench_infer(model, args, device, dtype)
            _sync(device)
        finally:
            for h in handles:
                h.remove()
            args.steps, args.warmup = steps, warmup
        averages = prof.key_averages()
        table = averages.table(sort_by=sort, row_limit=30)
        with open(osp.join(args.profile, f'{mode}_ops.txt'), 'w') as f:
            f.write(table)
        # Time inside each part's forward ranges (backward runs outside them), per step. The
        # profiler lists a range twice on CUDA: as a host event (host time between entering and
        # leaving it, the call count, the time of the kernels launched inside it) and as a device
        # annotation (the span from its first kernel's start to its last kernel's end, idle
        # gaps included).
        parts = {}
        for evt in averages:
            if not evt.key.startswith('part::'):
                continue
            row = parts.setdefault(evt.key[6:], [0.0, 0.0, 0.0, 0])
            device_time = (getattr(evt, 'device_time_total', 0.0) or 0.0) / 1e3 / PROFILE_STEPS
            if str(getattr(evt, 'device_type', 'CPU')).endswith('CPU'):
                row[0] = evt.cpu_time_total / 1e3 / PROFILE_STEPS
                row[1] = device_time
                row[3] = evt.count // PROFILE_STEPS
            else:
                row[2] = device_time
        lines = [f'{mode}: forward per step by part: host ms, kernel ms, device span ms, calls']
        lines += [f'  {k:<16}{v[0]:>10.1f}{v[1]:>10.1f}{v[2]:>10.1f}{v[3]:>6}'
                  for k, v in sorted(parts.items())]
        with open(osp.join(args.profile, f'{mode}_modules.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
        print('\n'.join(lines))
        print(f'profile of {mode} written to {args.profile}/{mode}_ops.txt')


def _report(mode, times, flops, samples, tokens, extra) -> Dict:
    st = _stats(times)
    total = sum(flops.values())
    return dict(mode=mode, steps=len(times), step_time_s=st, samples_per_s=samples / st['mean'],
                tokens_per_s=tokens / st['mean'], flops_per_step=total,
                flops_breakdown=dict(flops), achieved_tflops=total / st['mean'] / 1e12, **extra)


def data_train_flops(model, cfg, batches: int) -> Dict:
    """Mean FLOPs of a training step over the first ``batches`` batches of the config's own
    ``train_dataloader`` (its data and sampler, loaded in this process, with the random draws of
    its pipeline seeded by the config's seed as the runner seeds them).

    Each batch is counted at its padded length (the longest sequence, image tokens included:
    padding runs through the LLM too) with the targets its sequences write.
    """
    from mmengine.runner import Runner, set_random_seed

    from pixellm.engine.tool_config import check_data_or_exit
    check_data_or_exit(cfg, ('train_dataloader', ), 'tools/analysis/benchmark.py --data-batches')
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    seed = (cfg.get('randomness') or {}).get('seed')
    if seed is not None:
        set_random_seed(seed)
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    image_tokens = model.llm_image_grid ** 2
    steps, shapes = [], []
    for _, data in zip(range(batches), loader):
        samples = data['data_samples']
        length = max(len(s.input_ids) - 1 + image_tokens for s in samples)
        targets = sum(model.codebook.count_targets(s.input_ids[None], strict=False)[0]
                      for s in samples)
        steps.append(train_step_flops(model, len(samples), length, targets))
        shapes.append((len(samples), length, targets))
    if not steps:
        raise ValueError(f'{cfg.filename}: train_dataloader gave no batch')
    flops = OrderedDict((k, statistics.fmean(step[k] for step in steps)) for k in steps[0])
    return dict(mode='train', batches=len(steps),
                batch_size=statistics.fmean(b for b, _, _ in shapes),
                seq_len=statistics.fmean(n for _, n, _ in shapes),
                targets_per_batch=statistics.fmean(t for _, _, t in shapes),
                flops_per_step=sum(flops.values()), flops_breakdown=dict(flops))


def count_flops(model, cfg, args) -> List[Dict]:
    """The FLOPs of the steps the benchmark would time, without running them (``--flops-only``):
    a training step on ``--batch-size`` sequences of ``--seq-len`` tokens with ``--targets``
    targets each, and one question generating ``--new-tokens`` tokens that name as many targets
    as fit (as :func:`bench_infer` steers them)."""
    runs = []
    if args.mode in ('train', 'both') and args.data_batches is not None:
        runs.append(data_train_flops(model, cfg, args.data_batches))
    elif args.mode in ('train', 'both'):
        synthetic_batch(model, 1, args.seq_len, args.targets)  # the targets fit in --seq-len
        flops = synthetic_train_flops(model, args)
        runs.append(dict(mode='train', batch_size=args.batch_size, seq_len=args.seq_len,
                         targets_per_sample=args.targets, flops_per_step=sum(flops.values()),
                         flops_breakdown=dict(flops)))
    if args.mode in ('infer', 'both'):
        _, _, prompt_len = synthetic_question(model, args)
        masks = fitting_targets(model, args.targets, args.new_tokens)
        flops = generate_flops(model, prompt_len, args.new_tokens, masks)
        runs.append(dict(mode='infer', batch_size=1, prompt_len=prompt_len,
                         new_tokens=args.new_tokens, predicted_masks=masks,
                         flops_per_step=sum(flops.values()), flops_breakdown=dict(flops)))
    return runs


def _print_breakdown(run: Dict) -> None:
    print(f'  {"FLOPs per step":<22}{run["flops_per_step"]:>14.4e}')
    for name, val in run['flops_breakdown'].items():
        print(f'    {name:<24}{val:>14.4e}')


def _print_table(result: Dict) -> None:
    print(f'\n{result["config"]}  device={result["device"]} ({result["device_name"]})  '
          f'dtype={result["dtype"]}  measured peak {result["peak_tflops"]:.3f} TFLOP/s '
          f'({result["peak_matmul_size"]}^3 matmul)')
    for r in result['runs']:
        st = r['step_time_s']
        print(f'\n[{r["mode"]}] {r["steps"]} steps  step time mean {st["mean"]*1e3:.1f} ms  '
              f'p50 {st["p50"]*1e3:.1f} ms  p90 {st["p90"]*1e3:.1f} ms')
        print(f'  samples/s {r["samples_per_s"]:.3f}  tokens/s {r["tokens_per_s"]:.1f}  '
              f'achieved {r["achieved_tflops"]:.4f} TFLOP/s  MFU {r["mfu"]*100:.2f}%  '
              f'peak memory {r["peak_memory_bytes"]/2**20:.0f} MiB')
        _print_breakdown(r)


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--mode', choices=('train', 'infer', 'both'), default='both')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='training batch; defaults to the config\'s train batch size')
    parser.add_argument('--steps', type=int, default=None, help='timed steps per mode (5)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='untimed steps before them (1)')
    parser.add_argument('--dtype', choices=('bf16', 'fp32'), default=None,
                        help='autocast dtype; defaults to bf16 on CUDA, fp32 on CPU')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default=None)
    parser.add_argument('--seq-len', type=int, default=None,
                        help='LLM tokens per training sequence (image tokens included); '
                             'defaults to the tokenizer\'s model_max_length')
    parser.add_argument('--targets', type=int, default=None,
                        help='targets per answer; defaults to 3')
    parser.add_argument('--new-tokens', type=int, default=None,
                        help='tokens generated per inference step (the first ones are forced to '
                             'name targets, see bench_infer); defaults to 32, or more when the '
                             '--targets targets need more')
    parser.add_argument('--peak-size', type=int, default=None,
                        help='side of the peak matmul; defaults to 8192 on CUDA, 2048 on CPU')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--out', default=None, help='write the results as json here')
    parser.add_argument('--profile', default=None, metavar='DIR',
                        help=f'after the timed runs, profile {PROFILE_STEPS} steps of each mode '
                             'with torch.profiler and write the operators that take the most time '
                             '(DIR/<mode>_ops.txt) and the time per module kind '
                             '(DIR/<mode>_modules.txt)')
    parser.add_argument('--flops-only', action='store_true',
                        help='build the model on the meta device (no memory, no weights) and '
                             'print the FLOPs of the steps the benchmark would time, without '
                             'timing them')
    parser.add_argument('--data-batches', type=int, default=None, metavar='N',
                        help='with --flops-only: count the training step on the first N batches '
                             'of the config\'s train_dataloader (its data must be present) '
                             'instead of synthetic ones, and report the mean (the data\'s '
                             'batches replace --batch-size, --seq-len and --targets in the '
                             'training step; with --mode both the last two still shape the '
                             'question)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config keys, e.g. to shrink a recipe for a dry run')
    add_debug_argument(parser)
    return parser.parse_args(argv)


def check_args(args, cfg) -> None:
    """Refuse option combinations that would be ignored or cannot run, in one line."""
    def refuse(what):
        raise SystemExit(f'error: {what}')

    if args.data_batches is not None:
        if not args.flops_only or args.mode == 'infer':
            refuse('--data-batches counts the training step on the config\'s data; use it with '
                   '--flops-only and --mode train or both')
        if args.data_batches < 1:
            refuse(f'--data-batches must be at least 1, got {args.data_batches}')
        if cfg.get('train_dataloader') is None:
            refuse(f'{args.config}: --data-batches reads train_dataloader, which the config has '
                   'not')
    if args.flops_only:
        timing = [f'--{name.replace("_", "-")}' for name in
                  ('profile', 'device', 'dtype', 'steps', 'warmup', 'peak_size', 'threads')
                  if getattr(args, name) is not None]
        if timing:
            refuse(f'{", ".join(timing)} time the steps; --flops-only runs none')
    args.steps = 5 if args.steps is None else args.steps
    args.warmup = 1 if args.warmup is None else args.warmup
    for name in ('new_tokens', 'steps', 'batch_size', 'seq_len'):
        value = getattr(args, name)
        if value is not None and value < 1:
            refuse(f'--{name.replace("_", "-")} must be at least 1, got {value}')


def _fill_shapes(args, cfg, model) -> None:
    """The defaults of --seq-len, --targets and --batch-size: the recipe's shapes."""
    args.seq_len = args.seq_len or model.tokenizer.model_max_length
    args.targets = 3 if args.targets is None else args.targets
    if args.batch_size is None:
        loader = cfg.get('train_dataloader') or {}
        args.batch_size = loader.get('batch_size', 1) or 1


def _write(result: Dict, path: str) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=2)
    print(f'\nwrote {path}')


def flops_only(cfg, args) -> Dict:
    """``--flops-only``: count the steps' FLOPs on the meta-device model, print and return them."""
    from pixellm.models.meta_build import build_on_meta, count_parameters
    model = build_on_meta(cfg.model)
    _fill_shapes(args, cfg, model)
    total, trainable = count_parameters(model)
    result = dict(config=args.config, device='meta', params_total=total,
                  params_trainable=trainable, runs=count_flops(model, cfg, args))
    print(f'\n{args.config}  FLOPs counted on the meta device, nothing run; '
          f'{total:,} parameters ({trainable:,} trained)')
    for r in result['runs']:
        if r['mode'] == 'infer':
            shape = (f'prompt {r["prompt_len"]} tokens, {r["new_tokens"]} new, '
                     f'{r["predicted_masks"]} masks')
        elif 'batches' in r:
            shape = (f'mean of {r["batches"]} batches of the config\'s data: batch '
                     f'{r["batch_size"]:.2f} x {r["seq_len"]:.1f} tokens (padded), '
                     f'{r["targets_per_batch"]:.2f} targets')
        else:
            shape = (f'batch {r["batch_size"]} x {r["seq_len"]} tokens, '
                     f'{r["targets_per_sample"]} targets each')
        print(f'\n[{r["mode"]}] {shape}')
        _print_breakdown(r)
    if args.out:
        _write(result, args.out)
    return result


@cli_main
def main(argv=None) -> Dict:
    """Run the benchmark; return (and optionally write) the result dict."""
    args = parse_args(argv)
    from mmengine.registry import init_default_scope
    init_default_scope('pixellm')
    import pixellm.models  # noqa: F401
    from pixellm.models.meta_build import build_random_init, count_parameters
    from pixellm.utils import load_config
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    check_args(args, cfg)
    if args.flops_only:
        return flops_only(cfg, args)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda but torch sees no CUDA device')
    dtype_name = args.dtype or ('bf16' if device == 'cuda' else 'fp32')
    dtype = dict(bf16=torch.bfloat16, fp32=torch.float32)[dtype_name]
    peak_size = args.peak_size or (8192 if device == 'cuda' else 2048)
    peak = measure_peak_tflops(device, dtype, peak_size)
    print(f'measured matmul peak: {peak:.3f} TFLOP/s ({dtype_name}, {peak_size}^3, {device})')

    # Drawn on the device itself: a 7B model's random initialisation on the CPU takes minutes.
    with torch.device(device):
        model = build_random_init(cfg.model)
    model.to(device)
    total, trainable = count_parameters(model)
    _fill_shapes(args, cfg, model)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    runs = []
    if args.mode in ('train', 'both'):
        runs.append(bench_train(model, cfg, args, device, dtype))
        runs[-1]['peak_memory_bytes'] = peak_memory_bytes(device)
        runs[-1]['batch_size'] = args.batch_size
    if args.mode in ('infer', 'both'):
        if device == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        runs.append(bench_infer(model, args, device, dtype))
        runs[-1]['peak_memory_bytes'] = peak_memory_bytes(device)
        runs[-1]['batch_size'] = 1
    for r in runs:
        r['mfu'] = r['achieved_tflops'] / peak
    result = dict(
        config=args.config, device=device,
        device_name=(torch.cuda.get_device_name() if device == 'cuda'
                     else f'CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores'),
        dtype=dtype_name, peak_tflops=peak, peak_matmul_size=peak_size,
        params_total=total, params_trainable=trainable,
        peak_memory_note=('torch.cuda.max_memory_allocated' if device == 'cuda' else
                          'process peak RSS (ru_maxrss), cumulative over the run'),
        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), runs=runs)
    _print_table(result)
    if args.out:
        _write(result, args.out)
    # After the figures are printed and written: a profile can take long on a big model.
    if args.profile:
        profile_modes(model, cfg, args, device, dtype)
    return result


if __name__ == '__main__':
    main()
