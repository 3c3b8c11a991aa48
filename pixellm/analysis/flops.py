"""Analytic model FLOPs of a built segmentor (PixelLM, LISA), counted from its modules' shapes.

These are the FLOPs ``tools/analysis/benchmark.py`` reports and divides by time for MFU. They
need no data and no weights, so a model built on the meta device is counted in milliseconds.

Convention (a multiply-add is 2 FLOPs):

* A matmul ``(m, k) @ (k, n)`` costs ``2 m k n``; a convolution ``2 * out_positions * C_in *
  C_out * k_h * k_w`` (a transposed one counts its input positions); attention over ``q`` queries
  and ``c`` keys of total width ``d`` costs ``4 q c d`` (``QK^T`` and ``AV``). Causal masking is
  not discounted (kernels and ``FlopCounterMode`` count the full square). Norms, activations,
  softmax, losses, interpolation, the optimizer and the embedding lookup are not counted.
* Training multiplies each matmul by 3 when its weight is trained (forward, input gradient,
  weight gradient), by 2 when the weight is frozen but its input needs a gradient, by 1 when
  neither; a product of two activations by 1 plus one per operand that needs a gradient.
  Gradient-checkpointing recomputation is not counted (model FLOPs, as in PaLM).

Every component is counted by the formula registered for its class or, failing that, for its
nearest base class that has one (:func:`flop_formula`); a component with neither stops the count
with an error naming it, rather than leave it out. A subclass that adds matmuls registers its own.
Auxiliary heads count themselves (``step_flops``).
"""
import math
from collections import OrderedDict
from typing import Callable, Dict, Optional, Tuple

import torch

from pixellm.utils.cli import UserError

__all__ = ['FlopCountError', 'flop_formula', 'component_flops', 'matmul_multiplier', 'llm_flops',
           'llm_flops_per_token', 'train_step_flops', 'forward_flops', 'generate_flops',
           'check_llm_block']


class FlopCountError(UserError, ValueError):
    """A part of the model that the formulas cannot count: a component class without a formula,
    an LLM block of another shape, a partly trained encoder. The tools report it as one line."""


# Component class -> formula. Looked up along the class's MRO, so a subclass that computes the
# same thing needs no formula of its own.
_FORMULAS: Dict[type, Callable] = {}


def flop_formula(*classes: type) -> Callable:
    """Register the decorated function as the FLOP formula of ``classes``.

    An encoder formula is called ``fn(encoder, batch, training)``, a pixel-decoder formula
    ``fn(decoder, num_targets, batch, training, feats_grad)``; both return a dict of named FLOP
    counts. A plugin registers the formula of its own component the same way.
    """
    def register(fn: Callable) -> Callable:
        for klass in classes:
            _FORMULAS[klass] = fn
        return fn

    return register


def component_flops(module: torch.nn.Module, role: str, *args, **kwargs) -> Dict[str, float]:
    """Count ``module`` with the formula registered for its class.

    Args:
        module (nn.Module): The component.
        role (str): What it is in the model (``'vision_encoder'``...), for the error message.
        *args, **kwargs: The formula's arguments after the module.

    Raises:
        FlopCountError: No formula is registered for the class or a base class.
    """
    for klass in type(module).__mro__:
        if klass in _FORMULAS:
            return _FORMULAS[klass](module, *args, **kwargs)
    known = ', '.join(sorted(k.__name__ for k in _FORMULAS))
    raise FlopCountError(f'no FLOP formula for the {role} {type(module).__name__} (formulas '
                         f'exist for {known}); register one with '
                         'pixellm.analysis.flops.flop_formula')


def _trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def matmul_multiplier(training: bool, weight_trained: bool, input_grad: bool) -> int:
    """Forward/backward multiplier of one matmul (see the module docstring)."""
    if not training:
        return 1
    return 1 + int(input_grad) + int(weight_trained)


def _product_mult(training: bool, a_grad: bool, b_grad: bool) -> int:
    """Multiplier of a product of two activations: 1 plus one per operand needing a gradient."""
    return 1 + int(a_grad) + int(b_grad) if training else 1


# ----------------------------------------------------------------------------- the LLM
def llm_shapes(model) -> Dict:
    """The LLM's matmul shapes, read from its Hugging Face config and the added rows.

    Args:
        model: A built segmentor (any device, ``meta`` included).

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
        FlopCountError: The block has other linears or shapes; the message lists both.
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
        raise FlopCountError(f'the benchmark counts LLaMA-shaped decoder blocks {want}, but '
                             f'this LLM\'s block has {found}; its FLOP formulas do not apply')


def llm_flops(model, tokens: int, context: int, batch: int = 1, training: bool = False,
              base_trained: Optional[bool] = None,
              head_tokens: Optional[int] = None) -> Dict[str, float]:
    """LLM FLOPs of one forward (or fwd+bwd) over ``tokens`` new tokens per sequence.

    Args:
        model: A built segmentor (any device, ``meta`` included).
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
    return _llm_flops(model, s, tokens, context, batch, training, base_trained, head_tokens)


def _llm_flops(model, s: Dict, tokens: int, context: int, batch: int, training: bool,
               base_trained: Optional[bool], head_tokens: Optional[int]) -> Dict[str, float]:
    """:func:`llm_flops` on shapes ``s`` already checked by :func:`check_llm_block`."""
    if training and base_trained is None:
        base_trained = any(p.requires_grad for n, p in model.llm.hf_model.named_parameters()
                           if 'lora_' not in n)
    # The added token rows train, so every LLM activation needs an input gradient.
    base = matmul_multiplier(training, base_trained, True)
    lora_m = matmul_multiplier(training, True, True)
    n = batch * tokens
    per_layer = sum(i * o for i, o in llm_linear_shapes(s).values())
    lora = sum(s['lora_r'] * (i + o) for name, (i, o) in llm_linear_shapes(s).items()
               if name in s['lora_targets'])
    head_base = s['hidden'] * s['base_vocab']
    head_new = s['hidden'] * (s['vocab'] - s['base_vocab'])
    head_trained = model.llm.hf_model.get_output_embeddings().weight.requires_grad
    head_n = batch * (tokens if head_tokens is None else head_tokens)
    return dict(
        llm_matmul=2.0 * n * s['layers'] * per_layer * base,
        llm_lora=2.0 * n * s['layers'] * lora * lora_m,
        llm_head=2.0 * head_n * (head_base * matmul_multiplier(training, head_trained, True)
                                 + head_new * matmul_multiplier(training, True, True)),
        # Both operands of QK^T and AV need gradients: backward is two products per product.
        llm_attention=4.0 * batch * tokens * context * s['heads'] * s['head_dim']
        * s['layers'] * matmul_multiplier(training, True, True))


def llm_flops_per_token(model, seq_len: int) -> float:
    """Forward FLOPs per token of an ``seq_len``-token sequence: ``2 P_mm + 4 L T H d_head``."""
    return sum(llm_flops(model, seq_len, seq_len).values()) / seq_len


# ----------------------------------------------------------------------------- image encoders
def _trained_as_whole(enc, params) -> bool:
    """Whether the weights of the parts of ``enc`` that run train. The encoder formulas count an
    encoder trained or frozen as a whole.

    Raises:
        FlopCountError: Some of those weights train and others not.
    """
    flags = {p.requires_grad for p in params}
    if len(flags) > 1:
        raise FlopCountError(f'{type(enc).__name__} is partly trained (some of the weights that '
                             'run train, others are frozen); its FLOP formula counts an encoder '
                             'trained or frozen as a whole')
    return True in flags


def _patch_embed_flops(patches: int, pixels: int, width: int, training: bool,
                       trained: bool) -> float:
    """The patch embedding: one ``pixels -> width`` matmul per patch. The images need no
    gradient, so it never computes an input gradient."""
    return 2.0 * patches * pixels * width * matmul_multiplier(training, trained, False)


def _clip_flops(enc, batch: int, training: bool = False) -> Dict[str, float]:
    """CLIP vision tower: patch embedding and the layers run (up to the deepest selected one)."""
    cfg = enc.config
    c, f, p = cfg.hidden_size, cfg.intermediate_size, enc.patch_size
    patches = enc.grid_size ** 2
    n = patches + 1
    run = enc.layers_run
    vm = enc.vision_model
    trained = _trained_as_whole(enc, [*vm.embeddings.parameters(), *vm.pre_layrnorm.parameters(),
                                      *(p for layer in vm.encoder.layers[:run]
                                        for p in layer.parameters())])
    patch = _patch_embed_flops(batch * patches, 3 * p * p, c, training, trained)
    m = matmul_multiplier(training, trained, trained)
    layers = 2.0 * batch * n * (4 * c * c + 2 * c * f) * run * m
    attn = 4.0 * batch * n * n * c * run * m
    return dict(patch=patch, matmul=layers, attention=attn)


def _sam_flops(enc, batch: int, training: bool = False) -> Dict[str, float]:
    """SAM's ViT: patch embedding, windowed and global blocks, the conv neck.

    A windowed block runs q/k/v/proj and attention on the windows of the zero-padded grid (SAM
    pads the ``g x g`` grid up to a multiple of the window), the MLP on the ``g x g`` tokens;
    a global block runs everything on ``g x g``. The decomposed relative positions cost two
    products of each query with its row's and its column's embeddings: ``2 * tokens * side * C``
    each, ``side`` the window (or grid) side.
    """
    cfg = enc.config
    vit = enc.image_encoder
    c, p, g = cfg.hidden_size, enc.patch_size, enc.grid_size
    mlp = vit.layers[0].mlp.lin1.out_features
    out = vit.neck.conv1.out_channels
    trained = _trained_as_whole(enc, vit.parameters())
    m = matmul_multiplier(training, trained, trained)
    patch = _patch_embed_flops(batch * g * g, 3 * p * p, c, training, trained)
    linear = attn = 0.0
    for i in range(cfg.num_hidden_layers):
        w = cfg.window_size if i not in cfg.global_attn_indexes else 0
        if w:
            windows, side = math.ceil(g / w) ** 2, w
        else:
            windows, side = 1, g
        tokens = windows * side * side
        linear += 2.0 * tokens * 4 * c * c + 2.0 * g * g * 2 * c * mlp
        attn += 4.0 * windows * (side * side) ** 2 * c
        if cfg.use_rel_pos:
            attn += 4.0 * tokens * side * c
    neck = 2.0 * g * g * (c * out + 9 * out * out)
    return dict(patch=patch, matmul=batch * linear * m, attention=batch * attn * m,
                neck=batch * neck * matmul_multiplier(training, trained, trained))


def _timm_vit_flops(enc, batch: int, training: bool = False) -> Dict[str, float]:
    """A timm ViT: patch embedding, then every block the encoder holds (it keeps none past the
    deepest tap) over the patches and the prefix (class, register) tokens: each block's linears
    (whatever its MLP: GELU, SwiGLU) and its attention products."""
    vit = enc.vision_model
    g, p = enc.grid_size, enc.patch_size
    n = g * g + vit.num_prefix_tokens
    conv = vit.patch_embed.proj
    trained = _trained_as_whole(enc, vit.parameters())
    m = matmul_multiplier(training, trained, trained)
    patch = _patch_embed_flops(batch * g * g, conv.in_channels * p * p, conv.out_channels,
                               training, trained)
    linear = attn = 0.0
    for block in vit.blocks:
        linear += sum(2.0 * n * layer.in_features * layer.out_features
                      for layer in block.modules() if isinstance(layer, torch.nn.Linear))
        attn += 4.0 * n * n * block.attn.num_heads * block.attn.head_dim
    return dict(patch=patch, matmul=batch * linear * m, attention=batch * attn * m)


def _register_encoders() -> None:
    from pixellm.models.vision_encoders import (CLIPVisionEncoder, SAMImageEncoder,
                                                TimmVisionEncoder)
    flop_formula(CLIPVisionEncoder)(_clip_flops)
    flop_formula(SAMImageEncoder)(_sam_flops)
    flop_formula(TimmVisionEncoder)(_timm_vit_flops)


def encoder_flops(model, batch: int, training: bool = False) -> Dict[str, float]:
    """FLOPs of the image encoders for ``batch`` images: ``encoder_*`` for the vision encoder
    (the LLM's view) and ``mask_encoder_*`` for a separate mask encoder (LISA's SAM)."""
    out = OrderedDict()
    parts = [('encoder', 'vision_encoder')]
    if getattr(model, 'mask_encoder', None) is not None:
        parts.append(('mask_encoder', 'mask_encoder'))
    for prefix, role in parts:
        flops = component_flops(getattr(model, role), role, batch, training)
        out.update((f'{prefix}_{k}', v) for k, v in flops.items())
    return out


# ----------------------------------------------------------------------------- projectors
def _linear_chain_flops(layers, tokens: int, training: bool, input_grad: bool) -> float:
    """The linears of a sequence of layers (a projector, ``text_hidden_fcs``) on ``tokens``
    rows; a linear's input needs a gradient once its input did or a linear before it trains."""
    total, needs = 0.0, input_grad
    for layer in layers:
        if isinstance(layer, torch.nn.Linear):
            w = layer.weight.requires_grad
            total += 2.0 * tokens * layer.in_features * layer.out_features * \
                matmul_multiplier(training, w, needs)
            needs = needs or w
    return total


def projector_flops(model, batch: int, training: bool = False) -> Dict[str, float]:
    """FLOPs of the LLM projector, and of the projector of the decoder's features when the
    decoder reads the vision encoder (PixelLM; a mask encoder's features go unprojected)."""
    enc = model.vision_encoder
    feats_grad = _trainable(enc)
    k = model.llm_image_grid
    out = dict(projector=_linear_chain_flops(model.projector.layers, batch * k * k, training,
                                             feats_grad))
    if getattr(model, 'mask_encoder', None) is None:
        out['mask_projector'] = _linear_chain_flops(
            model.decoder_projector.layers, batch * enc.grid_size ** 2 * enc.num_scales, training,
            feats_grad)
    return out


# ----------------------------------------------------------------------------- pixel decoders
def _attention(dim: int, inner: int, q: int, kv: int, training: bool = False,
               weight_trained: bool = True, q_grad: bool = True,
               kv_grad: bool = True) -> Tuple[float, float]:
    """(projections, products) FLOPs of one SAM-style attention (q/k/v/out projections to and
    from ``inner`` channels) of ``q`` queries over ``kv`` keys.

    ``q_grad`` / ``kv_grad``: whether the query / key-value inputs need a gradient.
    """
    w = weight_trained
    proj = 2.0 * (q * dim * inner * matmul_multiplier(training, w, q_grad)
                  + 2 * kv * dim * inner * matmul_multiplier(training, w, kv_grad)
                  + q * inner * dim * matmul_multiplier(training, w, q_grad or kv_grad or w))
    qk = 2.0 * q * kv * inner * _product_mult(training, w or q_grad, w or kv_grad)
    av = 2.0 * q * kv * inner * _product_mult(training, w or q_grad or kv_grad, w or kv_grad)
    return proj, qk + av


def two_way_transformer_flops(depth: int, dim: int, inner: int, mlp_dim: int, tokens: int,
                              pixels: int, training: bool = False, weight_trained: bool = True,
                              tokens_grad: bool = True, image_grad: bool = True) -> float:
    """SAM's two-way transformer: per block token self-attention, token->image attention, the
    token MLP and image->token attention; then the final token->image attention.

    Args:
        depth (int): Blocks.
        dim (int): Width of tokens and image embedding.
        inner (int): Width inside the cross attentions (``dim / downsample_rate``).
        mlp_dim (int): Hidden width of the token MLP.
        tokens (int): Output and prompt tokens.
        pixels (int): Image-embedding positions.
        training (bool): Count backward too.
        weight_trained (bool): The transformer's weights train.
        tokens_grad (bool): The tokens need a gradient (a trained prompt).
        image_grad (bool): The image embedding needs a gradient (a trained encoder or neck);
            after the first block's image->token attention it does whenever anything trains.
    """
    w, t = weight_trained, tokens_grad or weight_trained
    total = 0.0
    for _ in range(depth):
        sp, sa = _attention(dim, dim, tokens, tokens, training, w, t, t)
        tp, ta = _attention(dim, inner, tokens, pixels, training, w, t, image_grad)
        mlp = 2.0 * 2 * tokens * dim * mlp_dim * matmul_multiplier(training, w, t)
        ip, ia = _attention(dim, inner, pixels, tokens, training, w, image_grad, t)
        total += sp + sa + tp + ta + mlp + ip + ia
        image_grad = image_grad or t
    fp, fa = _attention(dim, inner, tokens, pixels, training, w, t, image_grad)
    return total + fp + fa


def _pixel_decoder_flops(dec, num_targets: int, batch: int, training: bool = False,
                         feats_grad: bool = True) -> Dict[str, float]:
    """PixelLM's decoder. The image neck runs once per image and scale; everything else once
    per target and scale; nothing runs without targets. A frozen neck (``train_neck=False``) or
    fusion weights (``learn_fusion_weights=False``) take no weight gradient, and the first
    scale's image embedding needs a gradient only when the neck or the features it reads train."""
    if num_targets == 0:
        return dict(decoder_prompt=0.0, decoder_neck=0.0, decoder_transformer=0.0,
                    decoder_upscale=0.0, decoder_pe=0.0)
    m = matmul_multiplier(training, True, True)
    neck_trained = _trainable(dec.image_feature_neck)
    necked_grad = neck_trained or feats_grad
    c_in, e, g = dec.in_channels, dec.embed_dim, dec.grid_size
    s, t = dec.num_scales, dec.tokens_per_scale
    tr = dec.transformers[0]
    depth = len(tr.layers)
    mlp_dim = tr.layers[0].mlp[0].out_features
    inner = tr.final_attn_token_to_image.q_proj.out_features
    nq = 1 + dec.num_mask_tokens + 1  # IoU token, mask tokens, the prompt
    n_states = num_targets * s * t
    prompt = 2.0 * n_states * (c_in * c_in + c_in * e) * m
    prompt += 2.0 * n_states * e * matmul_multiplier(training, dec.token_fusion.requires_grad, True)
    # The neck: a 1x1 conv from the features, then a 3x3 conv whose input needs a gradient
    # when either the first conv or the features train.
    neck = 2.0 * batch * s * g * g * (
        dec.feat_channels * e * matmul_multiplier(training, neck_trained, feats_grad)
        + 9 * e * e * matmul_multiplier(training, neck_trained, necked_grad))
    trans = up = pe = 0.0
    for level in range(s):
        hw = g * g if level == 0 else (2 * g) ** 2
        if level:
            # upsample_2x: ConvTranspose2d(e, e, 2, 2) on the neck's output.
            up += 2.0 * g * g * e * e * 4 * matmul_multiplier(training, True, necked_grad)
        pe += 2.0 * hw * 2 * (e // 2)  # PE matmul, computed once per level, no gradient
        # From the second scale on, the embedding is upsampled by trained weights and gated by
        # the previous scale's mask, so it needs a gradient whenever anything trains.
        trans += two_way_transformer_flops(depth, e, inner, mlp_dim, nq, hw, training,
                                           image_grad=necked_grad or level > 0)
        up += (2.0 * hw * e * (e // 8) * 4          # output_upscaling ConvTranspose2d(e, e/8, 2, 2)
               + 2.0 * (e * e + e * e + e * (e // 8))  # hypernetwork MLP, first mask token
               + 2.0 * (e // 8) * 4 * hw) * m          # hyper . upscaled features
    return dict(decoder_prompt=prompt,
                decoder_neck=neck,
                decoder_transformer=trans * num_targets,
                decoder_upscale=up * num_targets, decoder_pe=pe)


def _mlp_flops(mlp, tokens: int) -> float:
    """Forward FLOPs of a stack of linears (SAM's ``SamFeedForward``) on ``tokens`` rows."""
    return sum(2.0 * tokens * layer.in_features * layer.out_features
               for layer in mlp.modules() if isinstance(layer, torch.nn.Linear))


def _lisa_decoder_flops(dec, num_targets: int, batch: int, training: bool = False,
                        feats_grad: bool = False) -> Dict[str, float]:
    """LISA's head: ``text_hidden_fcs`` on each ``[SEG]`` state, then SAM's mask decoder once
    per target (``multimask_output=False``).

    SAM's mask decoder computes all of its mask tokens' outputs and keeps the first: the
    upscaling, every hypernetwork MLP, the product with every mask token and the IoU head run
    for each target. In training the kept mask's loss reaches the first hypernetwork MLP and,
    through the product, the others' inputs (their frozen weights still pass the gradient on);
    the IoU head's output is dropped, so it runs forward only. The dense positional encoding
    runs once per call.
    """
    md = dec.mask_decoder
    e, g, n = dec.feat_channels, dec.grid_size, num_targets
    if n == 0:
        return dict(decoder_prompt=0.0, decoder_transformer=0.0, decoder_upscale=0.0,
                    decoder_iou_head=0.0, decoder_pe=0.0)
    # The [SEG] states come from the LLM, which trains.
    prompt = _linear_chain_flops(dec.text_hidden_fcs, n * dec.tokens_per_scale, training, True)
    tr = md.transformer
    trained = _trainable(tr)
    nq = 1 + md.num_mask_tokens + dec.tokens_per_scale
    inner = tr.final_attn_token_to_image.internal_dim
    trans = two_way_transformer_flops(
        len(tr.layers), e, inner, tr.layers[0].mlp.lin1.out_features, nq, g * g, training,
        trained, tokens_grad=True, image_grad=feats_grad)
    grad = True  # the transformer's outputs depend on the prompts, which train
    up1, up2 = md.upscale_conv1, md.upscale_conv2
    hw1, hw2 = (2 * g) ** 2, (4 * g) ** 2
    up = 2.0 * g * g * up1.in_channels * up1.out_channels * 4 * \
        matmul_multiplier(training, up1.weight.requires_grad, grad)
    up += 2.0 * hw1 * up2.in_channels * up2.out_channels * 4 * \
        matmul_multiplier(training, up2.weight.requires_grad, grad)
    for mlp in md.output_hypernetworks_mlps:
        up += _mlp_flops(mlp, 1) * matmul_multiplier(training, _trainable(mlp), grad)
    up += 2.0 * md.num_mask_tokens * up2.out_channels * hw2 * _product_mult(training, grad, grad)
    pe = 2.0 * g * g * 2 * (e // 2)
    return dict(decoder_prompt=prompt, decoder_transformer=trans * n, decoder_upscale=up * n,
                decoder_iou_head=_mlp_flops(md.iou_prediction_head, 1) * n, decoder_pe=pe)


def _register_decoders() -> None:
    from pixellm.models.pixel_decoders import LISAMaskDecoder, PixelDecoder
    flop_formula(PixelDecoder)(_pixel_decoder_flops)
    flop_formula(LISAMaskDecoder)(_lisa_decoder_flops)


def pixel_decoder_flops(model, num_targets: int, batch: int,
                        training: bool = False) -> Dict[str, float]:
    """Pixel-decoder FLOPs for ``num_targets`` targets over ``batch`` images."""
    if getattr(model, 'mask_encoder', None) is not None:
        feats_grad = _trainable(model.mask_encoder)
    else:
        feats_grad = (_trainable(model.vision_encoder)
                      or _trainable(model.decoder_projector))
    return component_flops(model.pixel_decoder, 'pixel_decoder', num_targets, batch, training,
                           feats_grad)


def aux_head_flops(model, batch: int, num_targets: int) -> Dict[str, float]:
    """FLOPs of the auxiliary heads (``PixelLM.aux_heads``) in one training step, from each head's
    ``step_flops(batch, num_targets, image_tokens, codebook_tokens)`` (forward and backward; the
    states they read take a gradient). ``predict`` never runs them.

    Raises:
        FlopCountError: A head has no ``step_flops``, so the step's count would be incomplete.
    """
    out = OrderedDict()
    for i, head in enumerate(getattr(model, 'aux_heads', ())):
        if not hasattr(head, 'step_flops'):
            raise FlopCountError(f'aux_heads[{i}] ({type(head).__name__}) has no step_flops('
                                 'batch, num_targets, image_tokens, codebook_tokens); the '
                                 'benchmark cannot count its FLOPs')
        codebook = model.codebook.num_scales * model.codebook.tokens_per_scale
        flops = head.step_flops(batch, num_targets, model.llm_image_grid ** 2, codebook)
        for name, value in flops.items():
            out[name] = out.get(name, 0.0) + value
    return out


# ----------------------------------------------------------------------------- whole steps
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
    """Analytic FLOPs of ``predict``: encoders, prefill of ``prompt_len`` tokens (the LM head on
    the last one only, as transformers' ``generate`` runs it), then one cached forward per new
    token but the last (nothing reads its state), then the pixel decoder on the targets
    written."""
    out = OrderedDict()
    out.update(encoder_flops(model, batch))
    out.update(projector_flops(model, batch))
    s = llm_shapes(model)
    check_llm_block(model, s)
    pre = _llm_flops(model, s, prompt_len, prompt_len, batch, False, None, head_tokens=1)
    for step in range(1, new_tokens):
        for key, val in _llm_flops(model, s, 1, prompt_len + step, batch, False, None,
                                   None).items():
            pre[key] += val
    out.update(pre)
    out.update(pixel_decoder_flops(model, num_targets, batch))
    return out


_register_encoders()
_register_decoders()
