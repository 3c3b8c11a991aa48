"""LISA written out from its source, independently of the toolbox: key layout and arithmetic.

The names and shapes are those of the official modules, read from dvlab-research/LISA:
``model/LISA.py`` (``LisaMetaModel.initialize_lisa_modules``: ``visual_model`` and
``text_hidden_fcs``), ``model/llava/model/llava_arch.py`` (``mm_projector = nn.Linear``) and
segment_anything's ``modeling/image_encoder.py`` (``ImageEncoderViT``: ``patch_embed.proj``,
``pos_embed``, ``blocks.N.{norm1,attn.{qkv,proj,rel_pos_h,rel_pos_w},norm2,mlp.{lin1,lin2}}``,
``neck`` a Sequential of conv, LayerNorm2d, conv, LayerNorm2d), ``prompt_encoder.py``
(``pe_layer.positional_encoding_gaussian_matrix`` buffer, ``point_embeddings``,
``not_a_point_embed``, ``mask_downscaling`` Sequential, ``no_mask_embed``), ``mask_decoder.py``
(``transformer``, ``iou_token``, ``mask_tokens``, ``output_upscaling`` Sequential,
``output_hypernetworks_mlps.N.layers.{0,1,2}``, ``iou_prediction_head.layers.{0,1,2}``) and
``transformer.py`` (``layers.N.{self_attn,norm1,cross_attn_token_to_image,norm2,mlp.{lin1,lin2},
norm3,norm4,cross_attn_image_to_token}``, ``final_attn_token_to_image``, ``norm_final_attn``;
attention ``{q,k,v,out}_proj`` with ``downsample_rate`` 2 for the cross attentions).

The forward functions below follow those modules step by step on a plain dict of tensors keyed
by the official names; they share no code with the toolbox or with transformers' SAM. Only the
last section builds toolbox modules: LISA's components under the names the converter targets.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------- official names and shapes
def sam_shapes(embed_dim, depth, num_heads, global_attn_indexes, window_size, image_size=1024,
               patch_size=16, out_chans=256, mlp_dim=2048, iou_hidden=256, mask_in_chans=16,
               decoder_depth=2, num_multimask_outputs=3):
    """``{key: shape}`` of segment_anything's ``Sam`` (as in ``sam_vit_h_4b8939.pth``)."""
    s = OrderedDict()
    grid = image_size // patch_size
    head_dim = embed_dim // num_heads
    s['image_encoder.pos_embed'] = (1, grid, grid, embed_dim)
    s['image_encoder.patch_embed.proj.weight'] = (embed_dim, 3, patch_size, patch_size)
    s['image_encoder.patch_embed.proj.bias'] = (embed_dim, )
    for i in range(depth):
        b = f'image_encoder.blocks.{i}.'
        size = grid if i in global_attn_indexes else window_size
        s[b + 'norm1.weight'] = s[b + 'norm1.bias'] = (embed_dim, )
        s[b + 'attn.rel_pos_h'] = s[b + 'attn.rel_pos_w'] = (2 * size - 1, head_dim)
        s[b + 'attn.qkv.weight'] = (3 * embed_dim, embed_dim)
        s[b + 'attn.qkv.bias'] = (3 * embed_dim, )
        s[b + 'attn.proj.weight'] = (embed_dim, embed_dim)
        s[b + 'attn.proj.bias'] = (embed_dim, )
        s[b + 'norm2.weight'] = s[b + 'norm2.bias'] = (embed_dim, )
        s[b + 'mlp.lin1.weight'] = (4 * embed_dim, embed_dim)
        s[b + 'mlp.lin1.bias'] = (4 * embed_dim, )
        s[b + 'mlp.lin2.weight'] = (embed_dim, 4 * embed_dim)
        s[b + 'mlp.lin2.bias'] = (embed_dim, )
    c = out_chans
    s['image_encoder.neck.0.weight'] = (c, embed_dim, 1, 1)
    s['image_encoder.neck.1.weight'] = s['image_encoder.neck.1.bias'] = (c, )
    s['image_encoder.neck.2.weight'] = (c, c, 3, 3)
    s['image_encoder.neck.3.weight'] = s['image_encoder.neck.3.bias'] = (c, )

    s['prompt_encoder.pe_layer.positional_encoding_gaussian_matrix'] = (2, c // 2)
    for i in range(4):
        s[f'prompt_encoder.point_embeddings.{i}.weight'] = (1, c)
    s['prompt_encoder.not_a_point_embed.weight'] = (1, c)
    q = mask_in_chans // 4
    s['prompt_encoder.mask_downscaling.0.weight'] = (q, 1, 2, 2)
    s['prompt_encoder.mask_downscaling.0.bias'] = (q, )
    s['prompt_encoder.mask_downscaling.1.weight'] = s['prompt_encoder.mask_downscaling.1.bias'] = (q, )
    s['prompt_encoder.mask_downscaling.3.weight'] = (mask_in_chans, q, 2, 2)
    s['prompt_encoder.mask_downscaling.3.bias'] = (mask_in_chans, )
    s['prompt_encoder.mask_downscaling.4.weight'] = (mask_in_chans, )
    s['prompt_encoder.mask_downscaling.4.bias'] = (mask_in_chans, )
    s['prompt_encoder.mask_downscaling.6.weight'] = (c, mask_in_chans, 1, 1)
    s['prompt_encoder.mask_downscaling.6.bias'] = (c, )
    s['prompt_encoder.no_mask_embed.weight'] = (1, c)

    def attention(prefix, inner):
        for proj in ('q_proj', 'k_proj', 'v_proj'):
            s[f'{prefix}.{proj}.weight'] = (inner, c)
            s[f'{prefix}.{proj}.bias'] = (inner, )
        s[f'{prefix}.out_proj.weight'] = (c, inner)
        s[f'{prefix}.out_proj.bias'] = (c, )

    t = 'mask_decoder.transformer.'
    for i in range(decoder_depth):
        b = f'{t}layers.{i}.'
        attention(b + 'self_attn', c)
        s[b + 'norm1.weight'] = s[b + 'norm1.bias'] = (c, )
        attention(b + 'cross_attn_token_to_image', c // 2)
        s[b + 'norm2.weight'] = s[b + 'norm2.bias'] = (c, )
        s[b + 'mlp.lin1.weight'] = (mlp_dim, c)
        s[b + 'mlp.lin1.bias'] = (mlp_dim, )
        s[b + 'mlp.lin2.weight'] = (c, mlp_dim)
        s[b + 'mlp.lin2.bias'] = (c, )
        s[b + 'norm3.weight'] = s[b + 'norm3.bias'] = (c, )
        s[b + 'norm4.weight'] = s[b + 'norm4.bias'] = (c, )
        attention(b + 'cross_attn_image_to_token', c // 2)
    attention(t + 'final_attn_token_to_image', c // 2)
    s[t + 'norm_final_attn.weight'] = s[t + 'norm_final_attn.bias'] = (c, )
    num_mask_tokens = num_multimask_outputs + 1
    s['mask_decoder.iou_token.weight'] = (1, c)
    s['mask_decoder.mask_tokens.weight'] = (num_mask_tokens, c)
    # ConvTranspose2d weights are (in, out, k, k).
    s['mask_decoder.output_upscaling.0.weight'] = (c, c // 4, 2, 2)
    s['mask_decoder.output_upscaling.0.bias'] = (c // 4, )
    s['mask_decoder.output_upscaling.1.weight'] = (c // 4, )
    s['mask_decoder.output_upscaling.1.bias'] = (c // 4, )
    s['mask_decoder.output_upscaling.3.weight'] = (c // 4, c // 8, 2, 2)
    s['mask_decoder.output_upscaling.3.bias'] = (c // 8, )
    for i in range(num_mask_tokens):
        b = f'mask_decoder.output_hypernetworks_mlps.{i}.layers.'
        for j, (o, n) in enumerate(((c, c), (c, c), (c // 8, c))):
            s[f'{b}{j}.weight'], s[f'{b}{j}.bias'] = (o, n), (o, )
    b = 'mask_decoder.iou_prediction_head.layers.'
    for j, (o, n) in enumerate(((iou_hidden, c), (iou_hidden, iou_hidden),
                                (num_mask_tokens, iou_hidden))):
        s[f'{b}{j}.weight'], s[f'{b}{j}.bias'] = (o, n), (o, )
    return s


def lisa_shapes(vocab, hidden, intermediate, layers, sam, clip_hidden=1024, out_dim=256,
                inv_freq=True, head_dim=None):
    """``{key: shape}`` of a released LISA folder (``LISAForCausalLM`` without ``vision_tower``).

    Args:
        sam (dict): :func:`sam_shapes` kwargs.
        inv_freq (bool): Add each layer's ``self_attn.rotary_emb.inv_freq`` buffer, which some
            transformers releases saved.
    """
    s = OrderedDict()
    s['model.embed_tokens.weight'] = (vocab, hidden)
    for i in range(layers):
        b = f'model.layers.{i}.'
        for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
            s[f'{b}self_attn.{proj}.weight'] = (hidden, hidden)
        if inv_freq:
            s[f'{b}self_attn.rotary_emb.inv_freq'] = ((head_dim or 128) // 2, )
        s[f'{b}mlp.gate_proj.weight'] = (intermediate, hidden)
        s[f'{b}mlp.up_proj.weight'] = (intermediate, hidden)
        s[f'{b}mlp.down_proj.weight'] = (hidden, intermediate)
        s[f'{b}input_layernorm.weight'] = (hidden, )
        s[f'{b}post_attention_layernorm.weight'] = (hidden, )
    s['model.norm.weight'] = (hidden, )
    s['model.mm_projector.weight'] = (hidden, clip_hidden)
    s['model.mm_projector.bias'] = (hidden, )
    for key, shape in sam_shapes(**sam).items():
        s['model.visual_model.' + key] = shape
    s['model.text_hidden_fcs.0.0.weight'] = (hidden, hidden)
    s['model.text_hidden_fcs.0.0.bias'] = (hidden, )
    s['model.text_hidden_fcs.0.2.weight'] = (out_dim, hidden)
    s['model.text_hidden_fcs.0.2.bias'] = (out_dim, )
    s['lm_head.weight'] = (vocab, hidden)
    return s


def random_state(shapes, seed=0):
    """Random tensors of the given shapes: norm weights near 1, the rest of order 1/sqrt(fan-in)."""
    g = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for key, shape in shapes.items():
        x = torch.randn(shape, generator=g)
        if ('norm' in key or 'neck.1.' in key or 'neck.3.' in key or 'upscaling.1.' in key
                or 'downscaling.1.' in key or 'downscaling.4.' in key) and key.endswith('weight'):
            x = 1 + 0.1 * x
        elif len(shape) > 1 and 'gaussian' not in key and 'pos_embed' not in key:
            x = x / math.sqrt(math.prod(shape[1:]))
        else:
            x = 0.1 * x
        out[key] = x
    return out


# ----------------------------------------------------------------- segment_anything, re-derived
def _layer_norm_2d(x, w, b, eps=1e-6):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    return w[:, None, None] * ((x - u) / torch.sqrt(s + eps)) + b[:, None, None]


def _linear(w, prefix, x):
    return x @ w[prefix + '.weight'].t() + w[prefix + '.bias']


def _rel_table(rel_pos, size):
    # get_rel_pos for equal query and key sizes with a table of 2 * size - 1 rows: no resizing.
    assert rel_pos.shape[0] == 2 * size - 1
    coords = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return rel_pos[coords]


def _vit_attention(w, prefix, x, num_heads):
    b, h, wd, dim = x.shape
    qkv = _linear(w, prefix + '.qkv', x).reshape(b, h * wd, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * num_heads, h * wd, -1).unbind(0)
    head_dim = dim // num_heads
    attn = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
    rh = _rel_table(w[prefix + '.rel_pos_h'], h)
    rw = _rel_table(w[prefix + '.rel_pos_w'], wd)
    r_q = q.reshape(b * num_heads, h, wd, head_dim)
    rel_h = torch.einsum('bhwc,hkc->bhwk', r_q, rh)
    rel_w = torch.einsum('bhwc,wkc->bhwk', r_q, rw)
    attn = (attn.view(-1, h, wd, h, wd) + rel_h[..., None] + rel_w[:, :, :, None, :])
    attn = attn.view(-1, h * wd, h * wd).softmax(-1)
    out = (attn @ v).view(b, num_heads, h, wd, -1).permute(0, 2, 3, 1, 4).reshape(b, h, wd, -1)
    return _linear(w, prefix + '.proj', out)


def sam_image_encoder(w, images, num_heads, global_attn_indexes, window_size, depth):
    """segment_anything's ``ImageEncoderViT.forward`` on official-layout weights ``w``."""
    p = 'image_encoder.'
    x = F.conv2d(images, w[p + 'patch_embed.proj.weight'], w[p + 'patch_embed.proj.bias'],
                 stride=w[p + 'patch_embed.proj.weight'].shape[-1]).permute(0, 2, 3, 1)
    x = x + w[p + 'pos_embed']
    dim = x.shape[-1]
    for i in range(depth):
        b = f'{p}blocks.{i}.'
        shortcut = x
        x = F.layer_norm(x, (dim, ), w[b + 'norm1.weight'], w[b + 'norm1.bias'], eps=1e-6)
        if i in global_attn_indexes:
            x = _vit_attention(w, b + 'attn', x, num_heads)
        else:
            n, hh, ww, c = x.shape
            ph, pw = (-hh) % window_size, (-ww) % window_size
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
            hp, wp = hh + ph, ww + pw
            x = x.view(n, hp // window_size, window_size, wp // window_size, window_size, c)
            x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
            x = _vit_attention(w, b + 'attn', x, num_heads)
            x = x.view(n, hp // window_size, wp // window_size, window_size, window_size, c)
            x = x.permute(0, 1, 3, 2, 4, 5).reshape(n, hp, wp, c)[:, :hh, :ww]
        x = shortcut + x
        y = F.layer_norm(x, (dim, ), w[b + 'norm2.weight'], w[b + 'norm2.bias'], eps=1e-6)
        x = x + _linear(w, b + 'mlp.lin2', F.gelu(_linear(w, b + 'mlp.lin1', y)))
    x = x.permute(0, 3, 1, 2)
    x = _layer_norm_2d(F.conv2d(x, w[p + 'neck.0.weight']), w[p + 'neck.1.weight'],
                       w[p + 'neck.1.bias'])
    x = F.conv2d(x, w[p + 'neck.2.weight'], padding=1)
    return _layer_norm_2d(x, w[p + 'neck.3.weight'], w[p + 'neck.3.bias'])


def _attention(w, prefix, q, k, v, num_heads):
    q, k, v = (_linear(w, f'{prefix}.{n}_proj', t) for n, t in (('q', q), ('k', k), ('v', v)))

    def heads(x):
        b, n, c = x.shape
        return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    attn = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1]), dim=-1)
    out = attn @ v
    b, h, n, c = out.shape
    return _linear(w, f'{prefix}.out_proj', out.transpose(1, 2).reshape(b, n, h * c))


def _ln(w, prefix, x):
    # nn.LayerNorm with its default eps, as segment_anything's TwoWayTransformer builds it.
    return F.layer_norm(x, (x.shape[-1], ), w[prefix + '.weight'], w[prefix + '.bias'], eps=1e-5)


def two_way_transformer(w, image_embedding, image_pe, point_embedding, depth, num_heads):
    """segment_anything's ``TwoWayTransformer.forward``."""
    t = 'mask_decoder.transformer.'
    keys = image_embedding.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries = point_embedding
    for i in range(depth):
        b = f'{t}layers.{i}.'
        if i == 0:  # skip_first_layer_pe
            queries = _attention(w, b + 'self_attn', queries, queries, queries, num_heads)
        else:
            q = queries + point_embedding
            queries = queries + _attention(w, b + 'self_attn', q, q, queries, num_heads)
        queries = _ln(w, b + 'norm1', queries)
        q, k = queries + point_embedding, keys + key_pe
        queries = _ln(w, b + 'norm2', queries + _attention(
            w, b + 'cross_attn_token_to_image', q, k, keys, num_heads))
        mlp = _linear(w, b + 'mlp.lin2', F.relu(_linear(w, b + 'mlp.lin1', queries)))
        queries = _ln(w, b + 'norm3', queries + mlp)
        q, k = queries + point_embedding, keys + key_pe
        keys = _ln(w, b + 'norm4', keys + _attention(
            w, b + 'cross_attn_image_to_token', k, q, queries, num_heads))
    q, k = queries + point_embedding, keys + key_pe
    queries = _ln(w, t + 'norm_final_attn', queries + _attention(
        w, t + 'final_attn_token_to_image', q, k, keys, num_heads))
    return queries, keys


def _mlp3(w, prefix, x):
    x = F.relu(_linear(w, prefix + '.layers.0', x))
    x = F.relu(_linear(w, prefix + '.layers.1', x))
    return _linear(w, prefix + '.layers.2', x)


def dense_pe(w, grid):
    """``PromptEncoder.get_dense_pe``: ``(1, C, grid, grid)``."""
    ones = torch.ones(grid, grid)
    y = (ones.cumsum(0) - 0.5) / grid
    x = (ones.cumsum(1) - 0.5) / grid
    coords = 2 * torch.stack([x, y], dim=-1) - 1
    coords = 2 * math.pi * (coords @ w['prompt_encoder.pe_layer.positional_encoding_gaussian_matrix'])
    return torch.cat([coords.sin(), coords.cos()], dim=-1).permute(2, 0, 1)[None]


def lisa_low_res_masks(w, fcs, hidden_states, image_embedding, num_heads, depth=2):
    """The low-res masks of one image as ``LISAForCausalLM.model_forward`` computes them.

    Args:
        w (dict): SAM weights, segment_anything names.
        fcs (dict): ``text_hidden_fcs.0`` weights, keys ``'0.weight'``, ``'0.bias'``,
            ``'2.weight'``, ``'2.bias'``.
        hidden_states (Tensor): ``(N, T, H)``: the hidden states of the N targets' T tokens.
        image_embedding (Tensor): ``(1, C, g, g)``: the SAM image encoder's output.

    Returns:
        Tensor: ``(N, 4g, 4g)``: ``low_res_masks[:, 0]`` with ``multimask_output=False``.
    """
    # text_hidden_fcs[0]: Linear, ReLU, Linear, Dropout(0).
    text = F.relu(hidden_states @ fcs['0.weight'].t() + fcs['0.bias'])
    text_embeds = text @ fcs['2.weight'].t() + fcs['2.bias']
    n = text_embeds.shape[0]
    c, g = image_embedding.shape[1], image_embedding.shape[-1]
    # prompt_encoder(points=None, boxes=None, masks=None, text_embeds=...): the sparse prompts
    # are the text embeddings alone; the dense prompt is no_mask_embed over the grid.
    sparse = torch.cat([torch.empty(n, 0, c), text_embeds], dim=1)
    dense = w['prompt_encoder.no_mask_embed.weight'].reshape(1, -1, 1, 1).expand(n, -1, g, g)
    # MaskDecoder.predict_masks
    output_tokens = torch.cat([w['mask_decoder.iou_token.weight'],
                               w['mask_decoder.mask_tokens.weight']], dim=0)
    tokens = torch.cat([output_tokens[None].expand(n, -1, -1), sparse], dim=1)
    src = torch.repeat_interleave(image_embedding, n, dim=0) + dense
    pos_src = torch.repeat_interleave(dense_pe(w, g), n, dim=0)
    hs, src = two_way_transformer(w, src, pos_src, tokens, depth, num_heads)
    num_mask_tokens = w['mask_decoder.mask_tokens.weight'].shape[0]
    mask_tokens_out = hs[:, 1:1 + num_mask_tokens]
    src = src.transpose(1, 2).reshape(n, c, g, g)
    u = 'mask_decoder.output_upscaling.'
    x = F.conv_transpose2d(src, w[u + '0.weight'], w[u + '0.bias'], stride=2)
    x = F.gelu(_layer_norm_2d(x, w[u + '1.weight'], w[u + '1.bias']))
    up = F.gelu(F.conv_transpose2d(x, w[u + '3.weight'], w[u + '3.bias'], stride=2))
    hyper = torch.stack([_mlp3(w, f'mask_decoder.output_hypernetworks_mlps.{i}',
                               mask_tokens_out[:, i]) for i in range(num_mask_tokens)], dim=1)
    b, cu, h, wd = up.shape
    masks = (hyper @ up.view(b, cu, h * wd)).view(b, num_mask_tokens, h, wd)
    return masks[:, 0]


def lisa_postprocess_masks(low_res, input_size, valid_hw, original_size):
    """``Sam.postprocess_masks`` as LISA calls it: ``(N, h, w)`` -> ``(N, H, W)``."""
    masks = F.interpolate(low_res[:, None].float(), (input_size, input_size), mode='bilinear',
                          align_corners=False)
    masks = masks[..., :valid_hw[0], :valid_hw[1]]
    return F.interpolate(masks, original_size, mode='bilinear', align_corners=False)[:, 0]


# ----------------------------------------------------------------- the toolbox's components
# LLaMA vocabulary + [SEG], <im_start>, <im_end> (train_ds.py adds them in this order).
ADDED = 3

# The released models: LLaVA-Lightning-7B-v1-1 / llava-llama-2-13b-chat-lightning-preview,
# CLIP ViT-L/14 at 224 (LISA's default --vision-tower), SAM ViT-H (build_sam_vit_h).
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
LLAMA_13B = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                 num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40)
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=224, patch_size=14,
                    hidden_act='quick_gelu', layer_norm_eps=1e-5)
SAM_VIT_H = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                 global_attn_indexes=(7, 15, 23, 31), window_size=14, image_size=1024,
                 patch_size=16, output_channels=256, num_pos_feats=128)


def lisa_components(llama, clip, sam_vision, decoder=None, lora=None):
    """The toolbox modules of a LISA model under the names the converter targets."""
    from pixellm.registry import MODELS
    model = nn.Module()
    model.llm = MODELS.build(dict(type='HFCausalLM', llm_config=dict(llama), lora=lora))
    model.llm.add_token_rows(ADDED)
    model.projector = MODELS.build(dict(type='MLPProjector', in_channels=clip['hidden_size'],
                                        out_channels=llama['hidden_size'], num_layers=1))
    model.vision_encoder = MODELS.build(dict(type='CLIPVisionEncoder', vision_config=clip,
                                             select_layers=(-2, )))
    model.mask_encoder = MODELS.build(dict(type='SAMImageEncoder', vision_config=sam_vision))
    enc = model.mask_encoder
    model.pixel_decoder = MODELS.build(dict(
        type='LISAMaskDecoder', in_channels=llama['hidden_size'], feat_channels=enc.embed_dim,
        grid_size=enc.grid_size, input_size=enc.image_size, mask_decoder_config=decoder))
    return model
