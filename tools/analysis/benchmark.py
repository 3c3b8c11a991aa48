"""Benchmark a config's PixelLM at full size with random weights: training and inference speed,
peak memory and MFU against a measured matmul peak.

Usage:
    python tools/analysis/benchmark.py projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py --device cpu \\
        --dtype fp32 --steps 3 --out work_dirs/benchmark_tiny.json

FLOP convention (model FLOPs, counted analytically; a multiply-add is 2 FLOPs):

* A matmul ``(m, k) @ (k, n)`` costs ``2 m k n``; a convolution ``2 * out_positions * C_in *
  C_out * k_h * k_w`` (a transposed one counts its input positions); scaled-dot-product attention
  over ``q`` queries and ``c`` keys of total width ``d`` costs ``4 q c d`` (``QK^T`` and ``AV``).
  Causal masking is not discounted (kernels and ``FlopCounterMode`` count the full square).
  Norms, activations, softmax, losses, interpolation and the optimizer are not counted.
* LLM forward over ``T`` tokens with ``K`` cached ones: ``2 * P_mm * T`` (``P_mm``: the weights of
  every matmul — q/k/v/o, gate/up/down, LoRA A and B, the LM head including the added rows; the
  embedding lookup is no matmul) plus ``4 * T * (T + K) * H * d_head`` per layer.
* CLIP: patch embedding ``2 * P * 3 p^2 * C``, then per run layer (layers past the deepest
  selected one are skipped) ``2 * N * (4 C^2 + 2 C F) + 4 N^2 C`` over ``N = P + 1`` tokens.
* Projectors: ``2 * tokens * (C_in h + h C_out)`` — the LLM projector on ``llm_image_grid^2``
  tokens, the mask projector on every scale's ``grid^2`` tokens.
* Pixel decoder, per target (the image neck per image and scale): ``text_hidden_fcs``, token
  fusion, the two-way transformer of each scale (token self-attention, token->image and
  image->token cross attention at half width, MLP, final token->image attention), the 2x upsampling
  transposed conv (scales > 0), the output upscaling transposed conv, the hypernetwork MLP, the
  mask product, and the Fourier positional-encoding matmul.
* Training multiplies each matmul by 3 when its weight is trained (forward, input gradient,
  weight gradient), by 2 when the weight is frozen but its input needs a gradient (LoRA's frozen
  base weights: backward still computes the input gradient), and by 1 when neither (a frozen CLIP
  tower with nothing trainable before it). Attention products count 3x wherever their inputs
  need gradients. Gradient-checkpointing recomputation is NOT counted (MFU uses model FLOPs, as
  in PaLM), so hardware utilisation with checkpointing is ~1/3 higher for the LLM part.

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
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

QUESTION = 'Please segment every object the question asks about.'


# ----------------------------------------------------------------------------- analytic FLOPs
def _trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _mult(training: bool, weight_trained: bool, input_grad: bool) -> int:
    """Forward/backward multiplier of one matmul (see the module docstring)."""
    if not training:
        return 1
    return 1 + int(input_grad) + int(weight_trained)


def llm_shapes(model) -> Dict:
    """The LLM's matmul shapes, read from its Hugging Face config and the added rows.

    Args:
        model: A built PixelLM (any device, ``meta`` included).

    Returns:
        dict: ``layers``, ``hidden``, ``ffn``, ``heads``, ``kv_heads``, ``head_dim``, ``vocab``
        (base plus added rows), ``lora_r`` (0 without LoRA) and ``lora_targets``.
    """
    cfg = model.llm.hf_model.config
    heads = cfg.num_attention_heads
    lora = model.llm.lora_cfg or {}
    return dict(layers=cfg.num_hidden_layers, hidden=cfg.hidden_size,
                ffn=cfg.intermediate_size, heads=heads,
                kv_heads=getattr(cfg, 'num_key_value_heads', None) or heads,
                head_dim=getattr(cfg, 'head_dim', None) or cfg.hidden_size // heads,
                vocab=model.llm.vocab_size, base_vocab=model.llm.base_vocab_size,
                lora_r=int(lora.get('r', 0)), lora_targets=list(lora.get('target_modules', [])))


def llm_linear_shapes(s: Dict) -> Dict[str, Tuple[int, int]]:
    """``(in, out)`` of each per-layer linear of a LLaMA block."""
    d, hd = s['hidden'], s['head_dim']
    return OrderedDict(q_proj=(d, s['heads'] * hd), k_proj=(d, s['kv_heads'] * hd),
                       v_proj=(d, s['kv_heads'] * hd), o_proj=(s['heads'] * hd, d),
                       gate_proj=(d, s['ffn']), up_proj=(d, s['ffn']), down_proj=(s['ffn'], d))


def check_llm_block(model, s: Dict) -> None:
    """Check that the LLM's decoder blocks are LLaMA-shaped, as the FLOP formulas assume.

    The formulas count the seven linears of :func:`llm_linear_shapes` per block (LLaMA, Mistral,
    Qwen2 and Qwen3 blocks have them). The linears of the first decoder block of the built model
    (LoRA wrappers looked through) must be exactly those, with those shapes.

    Raises:
        ValueError: The block has other linears or shapes; the message lists both.
    """
    layers = model.llm.hf_model.get_decoder().layers
    found = {}
    for name, module in layers[0].named_modules():
        parts = name.split('.')
        # peft's adapter layers (any adapter name) sit under lora_A / lora_B; the wrapped
        # linear is the wrapper's base_layer.
        if isinstance(module, torch.nn.Linear) and not {
                'lora_A', 'lora_B', 'lora_embedding_A', 'lora_embedding_B'} & set(parts):
            key = parts[-2] if parts[-1] == 'base_layer' else parts[-1]
            found[key] = (module.in_features, module.out_features)
    want = dict(llm_linear_shapes(s))
    if found != want:
        raise ValueError(f'the benchmark counts LLaMA-shaped decoder blocks {want}, but this '
                         f'LLM\'s block has {found}; its FLOP formulas do not apply')


def llm_flops(model, tokens: int, context: int, batch: int = 1, training: bool = False,
              base_trained: Optional[bool] = None,
              head_tokens: Optional[int] = None) -> Dict[str, float]:
    """LLM FLOPs of one forward (or fwd+bwd) over ``tokens`` new tokens per sequence.

    Args:
        model: A built PixelLM (any device, ``meta`` included).
        tokens (int): Tokens processed per sequence.
        context (int): Keys each token attends to at most (``tokens`` without a KV cache;
            ``cache + tokens`` with one). Attention counts ``tokens * context`` (full square).
        batch (int): Sequences. Defaults to 1.
        training (bool): Count backward too. Defaults to False.
        base_trained (bool, optional): Whether the base weights train; None reads the model.
        head_tokens (int, optional): Positions per sequence the LM head runs on (generation's
            prefill needs the last one only). None: every token.

    Returns:
        dict: ``llm_matmul``, ``llm_lora``, ``llm_head`` and ``llm_attention`` FLOPs.
    """
    s = llm_shapes(model)
    check_llm_block(model, s)
    if base_trained is None:
        base_trained = any(p.requires_grad for n, p in model.llm.hf_model.named_parameters()
                           if 'lora_' not in n)
    # The projector and the added rows train, so every LLM activation needs an input gradient.
    base = _mult(training, base_trained, True)
    lora_m = _mult(training, True, True)
    n = batch * tokens
    per_layer = sum(i * o for i, o in llm_linear_shapes(s).values())
    lora = sum(s['lora_r'] * (i + o) for name, (i, o) in llm_linear_shapes(s).items()
               if name in s['lora_targets'])
    head_base = s['hidden'] * s['base_vocab']
    head_new = s['hidden'] * (s['vocab'] - s['base_vocab'])
    head_trained = model.llm.hf_model.get_output_embeddings().weight.requires_grad
    return dict(
        llm_matmul=2.0 * n * s['layers'] * per_layer * base,
        llm_lora=2.0 * n * s['layers'] * lora * lora_m,
        llm_head=2.0 * batch * (tokens if head_tokens is None else head_tokens) * (head_base * _mult(training, head_trained, True)
                            + head_new * _mult(training, True, True)),
        # Both operands of QK^T and AV need gradients: backward is two products per product.
        llm_attention=4.0 * batch * tokens * context * s['heads'] * s['head_dim']
        * s['layers'] * _mult(training, True, True))


def llm_flops_per_token(model, seq_len: int) -> float:
    """Forward FLOPs per token of an ``seq_len``-token sequence: ``2 P_mm + 4 L T H d_head``."""
    return sum(llm_flops(model, seq_len, seq_len).values()) / seq_len


def encoder_flops(model, batch: int, training: bool = False) -> Dict[str, float]:
    """CLIP vision tower FLOPs (patch embedding and the run layers) for ``batch`` images."""
    enc = model.vision_encoder
    cfg = enc.config
    c, f, p = cfg.hidden_size, cfg.intermediate_size, enc.patch_size
    patches = enc.grid_size ** 2
    n = patches + 1
    num_layers = cfg.num_hidden_layers
    run = max(i % (num_layers + 1) for i in enc.select_layers)
    trained = _trainable(enc)
    # The images need no gradient: the patch embedding never computes an input gradient.
    patch = 2.0 * batch * patches * 3 * p * p * c * _mult(training, trained, False)
    m = _mult(training, trained, trained)
    layers = 2.0 * batch * n * (4 * c * c + 2 * c * f) * run * m
    attn = 4.0 * batch * n * n * c * run * m
    return dict(encoder_patch=patch, encoder_matmul=layers, encoder_attention=attn)


def _projector_flops(proj, tokens: int, training: bool, input_grad: bool) -> float:
    total, needs = 0.0, input_grad
    for layer in proj.layers:
        if isinstance(layer, torch.nn.Linear):
            w = layer.weight.requires_grad
            total += 2.0 * tokens * layer.in_features * layer.out_features * \
                _mult(training, w, needs)
            needs = needs or w
    return total


def projector_flops(model, batch: int, training: bool = False) -> Dict[str, float]:
    """FLOPs of the LLM projector and the mask projector for ``batch`` images."""
    enc = model.vision_encoder
    feats_grad = _trainable(enc)
    k = model.llm_image_grid
    out = dict(projector=_projector_flops(model.projector, batch * k * k, training, feats_grad))
    mask_proj = model.mask_projector if model.separate_mm_projector else model.projector
    out['mask_projector'] = _projector_flops(mask_proj, batch * enc.grid_size ** 2 *
                                             enc.num_scales, training, feats_grad)
    return out


def _attention(dim: int, inner: int, q: int, kv: int) -> Tuple[float, float]:
    """(projection, product) FLOPs of one decoder ``Attention`` with q queries and kv keys."""
    proj = 2.0 * (q * dim * inner + 2 * kv * dim * inner + q * inner * dim)
    return proj, 4.0 * q * kv * inner


def pixel_decoder_flops(model, num_targets: int, batch: int,
                        training: bool = False) -> Dict[str, float]:
    """Pixel-decoder FLOPs for ``num_targets`` targets over ``batch`` images.

    The image neck runs once per image and scale; everything else once per target and scale.
    """
    dec = model.pixel_decoder
    if num_targets == 0:
        return dict(decoder_prompt=0.0, decoder_neck=0.0, decoder_transformer=0.0,
                    decoder_upscale=0.0, decoder_pe=0.0)
    m = _mult(training, True, True)
    c_in, e, g = dec.in_channels, dec.embed_dim, dec.grid_size
    s, t = dec.num_scales, dec.tokens_per_scale
    tr = dec.transformers[0]
    depth = len(tr.layers)
    mlp_dim = tr.layers[0].mlp[0].out_features
    inner = tr.final_attn_token_to_image.q_proj.out_features
    nq = 1 + dec.num_mask_tokens + 1  # IoU token, mask tokens, the prompt
    prompt = 2.0 * num_targets * s * t * (c_in * c_in + c_in * e + e)
    neck = 2.0 * batch * s * g * g * (dec.feat_channels * e + 9 * e * e)
    trans = up = pe = 0.0
    for level in range(s):
        hw = g * g if level == 0 else (2 * g) ** 2
        if level:
            up += 2.0 * g * g * e * e * 4  # upsample_2x: ConvTranspose2d(e, e, 2, 2)
        pe += 2.0 * hw * 2 * (e // 2)  # PE matmul, computed once per level, no gradient
        per = 0.0
        for _ in range(depth):
            sp, sa = _attention(e, e, nq, nq)
            tp, ta = _attention(e, inner, nq, hw)
            ip, ia = _attention(e, inner, hw, nq)
            per += sp + sa + tp + ta + ip + ia + 2.0 * 2 * nq * e * mlp_dim
        fp, fa = _attention(e, inner, nq, hw)
        trans += per + fp + fa
        up += 2.0 * hw * e * (e // 8) * 4          # output_upscaling ConvTranspose2d(e, e/8, 2, 2)
        up += 2.0 * (e * e + e * e + e * (e // 8))  # hypernetwork MLP on the first mask token
        up += 2.0 * (e // 8) * 4 * hw               # hyper . upscaled features
    return dict(decoder_prompt=prompt * m, decoder_neck=neck * m,
                decoder_transformer=trans * num_targets * m,
                decoder_upscale=up * num_targets * m, decoder_pe=pe)


def aux_head_flops(model, batch: int, num_targets: int) -> Dict[str, float]:
    """FLOPs of the auxiliary heads (``PixelLM.aux_heads``) in one training step, from each head's
    ``step_flops(batch, num_targets, image_tokens, codebook_tokens)`` (forward and backward; the
    states they read take a gradient). ``predict`` never runs them.

    Raises:
        ValueError: A head has no ``step_flops``, so the step's count would be incomplete.
    """
    out = OrderedDict()
    for i, head in enumerate(getattr(model, 'aux_heads', ())):
        if not hasattr(head, 'step_flops'):
            raise ValueError(f'aux_heads[{i}] ({type(head).__name__}) has no step_flops(batch, '
                             'num_targets, image_tokens, codebook_tokens); the benchmark cannot '
                             'count its FLOPs')
        codebook = model.codebook.num_scales * model.codebook.tokens_per_scale
        flops = head.step_flops(batch, num_targets, model.llm_image_grid ** 2, codebook)
        for name, value in flops.items():
            out[name] = out.get(name, 0.0) + value
    return out


def train_step_flops(model, batch: int, seq_len: int, num_targets: int) -> Dict[str, float]:
    """Analytic FLOPs of one training step (fwd+bwd) on ``batch`` sequences of ``seq_len``
    tokens (image tokens included) with ``num_targets`` targets in all."""
    out = OrderedDict()
    out.update(encoder_flops(model, batch, True))
    out.update(projector_flops(model, batch, True))
    out.update(llm_flops(model, seq_len, seq_len, batch, True))
    out.update(pixel_decoder_flops(model, num_targets, batch, True))
    out.update(aux_head_flops(model, batch, num_targets))
    return out


def forward_flops(model, batch: int, seq_len: int, num_targets: int) -> Dict[str, float]:
    """Analytic FLOPs of one teacher-forced forward (``mode='tensor'``)."""
    out = OrderedDict()
    out.update(encoder_flops(model, batch))
    out.update(projector_flops(model, batch))
    out.update(llm_flops(model, seq_len, seq_len, batch))
    out.update(pixel_decoder_flops(model, num_targets, batch))
    return out


def generate_flops(model, prompt_len: int, new_tokens: int, num_targets: int,
                   batch: int = 1) -> Dict[str, float]:
    """Analytic FLOPs of ``predict``: encoder, prefill of ``prompt_len`` tokens (the LM head on
    the last one only, as transformers' ``generate`` runs it), then one cached forward per new
    token but the last (nothing reads its state), then the pixel decoder on the targets
    written."""
    out = OrderedDict()
    out.update(encoder_flops(model, batch))
    out.update(projector_flops(model, batch))
    pre = llm_flops(model, prompt_len, prompt_len, batch, head_tokens=1)
    for step in range(1, new_tokens):
        for key, val in llm_flops(model, 1, prompt_len + step, batch).items():
            pre[key] += val
    out.update(pre)
    out.update(pixel_decoder_flops(model, num_targets, batch))
    return out


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
    size = model.vision_encoder.image_size
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
        raise ValueError(f'--seq-len {seq_len} ({image_tokens} image tokens) leaves no room for '
                         f'the answer; raise it ({err})') from err
    if len(enc['input_ids']) != text_budget:
        raise ValueError(f'could not fill {seq_len} tokens ({text_budget} text ids): got '
                         f'{len(enc["input_ids"])}')
    written = model.codebook.count_targets(enc['input_ids'][None], strict=False)[0]
    if written != targets:
        raise ValueError(f'--seq-len {seq_len} leaves room for {written} of {targets} targets')
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
        raise ValueError('the config has no optim_wrapper; benchmark a training config')
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
    flops = train_step_flops(model, args.batch_size, args.seq_len,
                             args.targets * args.batch_size)
    return _report('train', times, flops, args.batch_size, args.batch_size * args.seq_len,
                   dict(seq_len=args.seq_len, targets_per_sample=args.targets))


def answer_ids(model, targets: int) -> List[int]:
    """Ids of ``'<target> and <target> ...'`` naming ``targets`` targets."""
    return model.tokenizer(' and '.join([model.codebook.target_text] * targets),
                           add_special_tokens=False).input_ids


def forced_answer_ids(model, targets: int, new_tokens: int) -> List[int]:
    """:func:`answer_ids` for as many of ``targets`` as fit in ``new_tokens - 1`` generated
    tokens (the last generated token's state is never read)."""
    for n in range(targets, 0, -1):
        ids = answer_ids(model, n)
        if len(ids) < new_tokens:
            return ids
    return []


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
    if args.new_tokens is None:
        # Room for every target's tokens, and at least 32 tokens of generation.
        args.new_tokens = max(32, len(answer_ids(model, args.targets)) + 1)
    model.max_new_tokens = args.new_tokens
    steer = GenerationSteer(model, forced_answer_ids(model, args.targets, args.new_tokens))
    images, samples = synthetic_batch(model, 1, args.seq_len, args.targets)
    prompt_len = len(samples[0].prompt_ids) - 1 + model.llm_image_grid ** 2
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
# Module kinds whose time the profile sums (record_function ranges around their forward).
PROFILED_PARTS = ('vision_encoder', 'projector', 'mask_projector', 'llm', 'pixel_decoder')


def _label_parts(model):
    """Forward pre/post hooks that open a ``record_function`` range per part of the model."""
    from torch.profiler import record_function
    handles = []
    for name in PROFILED_PARTS:
        part = getattr(model, name, None)
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
        print(f'  {"FLOPs per step":<22}{r["flops_per_step"]:>14.4e}')
        for name, val in r['flops_breakdown'].items():
            print(f'    {name:<20}{val:>14.4e}')


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--mode', choices=('train', 'infer', 'both'), default='both')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='training batch; defaults to the config\'s train batch size')
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
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
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='override config keys, e.g. to shrink a recipe for a dry run')
    return parser.parse_args(argv)


def main(argv=None) -> Dict:
    """Run the benchmark; return (and optionally write) the result dict."""
    args = parse_args(argv)
    from mmengine.registry import init_default_scope
    init_default_scope('pixellm')
    import pixellm.models  # noqa: F401
    from pixellm.models.meta_build import build_random_init, count_parameters
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda but torch sees no CUDA device')
    dtype_name = args.dtype or ('bf16' if device == 'cuda' else 'fp32')
    dtype = dict(bf16=torch.bfloat16, fp32=torch.float32)[dtype_name]
    from pixellm.utils import load_config
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    peak_size = args.peak_size or (8192 if device == 'cuda' else 2048)
    peak = measure_peak_tflops(device, dtype, peak_size)
    print(f'measured matmul peak: {peak:.3f} TFLOP/s ({dtype_name}, {peak_size}^3, {device})')

    # Drawn on the device itself: a 7B model's random initialisation on the CPU takes minutes.
    with torch.device(device):
        model = build_random_init(cfg.model)
    model.to(device)
    total, trainable = count_parameters(model)
    args.seq_len = args.seq_len or model.tokenizer.model_max_length
    args.targets = 3 if args.targets is None else args.targets
    if args.batch_size is None:
        loader = cfg.get('train_dataloader') or {}
        args.batch_size = loader.get('batch_size', 1) or 1
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
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'\nwrote {args.out}')
    # After the figures are printed and written: a profile can take long on a big model.
    if args.profile:
        profile_modes(model, cfg, args, device, dtype)
    return result


if __name__ == '__main__':
    main()
