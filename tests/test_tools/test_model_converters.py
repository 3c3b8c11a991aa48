"""Weights in: LLaVA v1 folders into the LLM, official PixelLM checkpoints into PixelLM.

The official checkpoints are imitated with a tiny module tree that has the official attribute
paths (``PixelLMForCausalLM`` is a ``LlamaForCausalLM`` whose ``model`` also holds the projectors,
``text_hidden_fcs``, the SAM prompt encoder, ``MaskDecoderMultiScale`` and the image neck). Its
forward is written here from the official semantics, so the converted toolbox model is compared
with an independent computation, not with itself.
"""
import json
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixellm.utils.config import load_config
from pixellm.engine import load_checkpoint_safely
from pixellm.models.converters import (checkpoint_files, convert_official_pixellm,
                                       load_hf_state_dict)
from pixellm.models.export import CheckpointMismatchError
from pixellm.models.meta_build import build_on_meta

from conftest import (REPO, TINY_MODEL_CFG, build_tiny, captured_log_records, load_tool,
                      make_batch, tiny_model_cfg)

S, T = 2, 3  # feature scales, codebook tokens per scale (tiny and 7B/13B alike)
PROMPT_ENCODER_UNUSED = ('point_embeddings', 'not_a_point_embed', 'mask_downscaling')


# ----------------------------------------------------------------- official module layout
class _PositionEmbeddingRandom(nn.Module):

    def __init__(self, num_pos_feats):
        super().__init__()
        self.register_buffer('positional_encoding_gaussian_matrix', torch.randn(2, num_pos_feats))

    def forward(self, h, w):
        grid = torch.ones(h, w)
        y = (grid.cumsum(0) - 0.5) / h
        x = (grid.cumsum(1) - 0.5) / w
        coords = (2 * torch.stack([x, y], -1) - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([coords.sin(), coords.cos()], -1).permute(2, 0, 1)


class _LayerNorm2d(nn.Module):

    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class _Attention(nn.Module):

    def __init__(self, dim, heads, downsample_rate=1):
        super().__init__()
        inner = dim // downsample_rate
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.v_proj, self.out_proj = nn.Linear(dim, inner), nn.Linear(inner, dim)

    def forward(self, q, k, v):
        q, k, v = self.q_proj(q), self.k_proj(k), self.v_proj(v)
        b, c = q.shape[0], q.shape[-1]

        def heads(x):
            return x.reshape(b, x.shape[1], self.heads, c // self.heads).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // self.heads), dim=-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, -1, c))


class _MLPBlock(nn.Module):

    def __init__(self, dim, mlp_dim):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

    def forward(self, x):
        return self.lin2(F.relu(self.lin1(x)))


class _TwoWayAttentionBlock(nn.Module):

    def __init__(self, dim, heads, mlp_dim, skip_first_layer_pe):
        super().__init__()
        self.self_attn = _Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = _Attention(dim, heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _MLPBlock(dim, mlp_dim)
        self.norm3, self.norm4 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cross_attn_image_to_token = _Attention(dim, heads, 2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class _TwoWayTransformer(nn.Module):

    def __init__(self, dim, heads, mlp_dim, depth=2):
        super().__init__()
        self.layers = nn.ModuleList(
            _TwoWayAttentionBlock(dim, heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = _Attention(dim, heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image, image_pe, point_embedding):
        keys = image.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class _MLP(nn.Module):

    def __init__(self, in_dim, hidden, out_dim, num_layers):
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims, [hidden] * (num_layers - 1) + [out_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class _MaskDecoderMultiScale(nn.Module):

    def __init__(self, dim, heads, mlp_dim, scales):
        super().__init__()
        self.transformer = nn.ModuleList(
            _TwoWayTransformer(dim, heads, mlp_dim) for _ in range(scales))
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(4, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 8, 2, 2), _LayerNorm2d(dim // 8), nn.GELU())
        self.upsample_2x = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, 2), _LayerNorm2d(dim), nn.GELU())
        self.pe1 = _PositionEmbeddingRandom(dim // 2)
        self.output_hypernetworks_mlps = nn.ModuleList(
            _MLP(dim, dim, dim // 8, 3) for _ in range(4))
        self.iou_prediction_head = _MLP(dim, 256, 4, 3)
        self.level_embed = nn.Embedding(scales, dim)

    def forward(self, image_embeddings, image_pe, sparse, dense, level, previous=None):
        n = sparse.shape[0]
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight])[None].expand(n, -1, -1)
        tokens = torch.cat([tokens, sparse], 1) + self.level_embed.weight[level]
        src = torch.repeat_interleave(image_embeddings, n, dim=0)
        if level > 0:
            src = self.upsample_2x(src)
            h, w = src.shape[-2:]
            # Official: repeat_interleave(prev[:, None], 256, 1), i.e. every channel of its 256.
            src = (previous.mean(1)[:, None].sigmoid() + 1) * src
            image_pe = self.pe1(h, w)[None]
            dense = F.interpolate(dense, (h, w), mode='bilinear', align_corners=False)
        src = src + dense
        pos = torch.repeat_interleave(image_pe, n, dim=0)
        b, c, h, w = src.shape
        hs, src = self.transformer[level](src, pos, tokens)
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in
                             enumerate(self.output_hypernetworks_mlps)], 1)
        masks = (hyper @ up.flatten(2)).view(b, 4, *up.shape[-2:])
        return masks[:, :1]


class _PromptEncoder(nn.Module):

    def __init__(self, dim, mask_in_chans=16):
        super().__init__()
        self.pe_layer = _PositionEmbeddingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, 2, 2), _LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, 2), _LayerNorm2d(mask_in_chans),
            nn.GELU(), nn.Conv2d(mask_in_chans, dim, 1))
        self.no_mask_embed = nn.Embedding(1, dim)


def official_pixellm(llama_cfg, vocab_rows, clip_width, dim, heads, mlp_dim):
    """A module with the official ``PixelLMForCausalLM`` attribute paths and shapes."""
    from transformers import LlamaConfig, LlamaForCausalLM
    llama = LlamaForCausalLM(LlamaConfig(**dict(llama_cfg, vocab_size=vocab_rows)))
    hidden = llama.config.hidden_size
    inner = llama.model
    inner.mm_projector = nn.Sequential(nn.Linear(clip_width, 2 * hidden), nn.GELU(),
                                       nn.Linear(2 * hidden, hidden))
    inner.out_mm_projector = nn.Sequential(nn.Linear(clip_width, 2 * hidden), nn.GELU(),
                                           nn.Linear(2 * hidden, hidden))
    inner.text_hidden_fcs = nn.ModuleList([nn.Sequential(
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim), nn.Dropout(0.0))])
    inner.prompt_encoder = _PromptEncoder(dim)
    inner.mask_decoder = _MaskDecoderMultiScale(dim, heads, mlp_dim, S)
    inner.image_feature_neck = nn.Sequential(
        nn.Conv2d(hidden, dim, 1, bias=False), _LayerNorm2d(dim),
        nn.Conv2d(dim, dim, 3, padding=1, bias=False), _LayerNorm2d(dim))
    return llama


def official_low_res(official, states, feats, grid):
    """The official multi-scale decoding of one image's targets (``model_forward``/``evaluate``).

    Args:
        states: ``(N, S, T, hidden)`` codebook hidden states.
        feats: per scale, ``(1, grid*grid, clip_width)`` CLIP features.
    """
    m = official.model
    embeds = m.text_hidden_fcs[0](states)
    multiseg_scalar = [1 / (S * T)] * (S * T)  # sized by all S*T codebook tokens
    multiscale_scalar = [1 / S] * S
    prompts = sum(multiseg_scalar[i] * embeds[:, :, i] for i in range(T))  # (N, S, dim)
    image = torch.stack([m.out_mm_projector(f) for f in feats])  # (S, 1, g*g, hidden)
    image = image[:, 0].permute(0, 2, 1).reshape(S, -1, grid, grid)
    image = m.image_feature_neck(image)
    n, out_size = prompts.shape[0], 4 * grid
    dense = m.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, grid, grid)
    low, previous = torch.zeros(n, 1, out_size, out_size), None
    for level in range(S):
        masks = m.mask_decoder(image[level][None], m.prompt_encoder.pe_layer(grid, grid)[None],
                               prompts[:, level][:, None], dense, level, previous)
        low = low + multiscale_scalar[level] * F.interpolate(masks, (out_size, out_size),
                                                             mode='bilinear', align_corners=False)
        previous = masks
    return low[:, 0]


# ----------------------------------------------------------------- tiny fixtures
def _tiny_dims():
    cfg = tiny_model_cfg()
    llama = {k: v for k, v in cfg['llm']['llm_config'].items() if k != 'model_type'}
    vision = cfg['vision_encoder']['vision_config']
    dec = cfg['pixel_decoder']
    return llama, vision, dec


def _write_sharded_bin(state, folder, num_shards=2):
    """Save like transformers 4.31 ``save_pretrained``: .bin shards and their index."""
    keys = list(state)
    weight_map = {}
    for i in range(num_shards):
        name = f'pytorch_model-{i + 1:05d}-of-{num_shards:05d}.bin'
        part = keys[i::num_shards]
        torch.save({k: state[k].clone() for k in part}, osp.join(folder, name))
        weight_map.update({k: name for k in part})
    with open(osp.join(folder, 'pytorch_model.bin.index.json'), 'w') as f:
        json.dump(dict(metadata=dict(total_size=0), weight_map=weight_map), f)


@pytest.fixture(scope='module')
def tiny_official():
    """The tiny official model, its state dict as the merge script saves it, and its CLIP."""
    from transformers import CLIPConfig, CLIPModel
    llama, vision, dec = _tiny_dims()
    torch.manual_seed(1)
    vocab_rows = 1024 + S * T  # the tiny tokenizer's 1024 ids + the codebook tokens
    official = official_pixellm(llama, vocab_rows, vision['hidden_size'], dec['embed_dim'],
                                dec['num_heads'], dec['mlp_dim']).eval()
    with torch.no_grad():  # trained-looking values: no LayerNorm at exactly 1/0, no zero bias
        for p in official.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {k: v for k, v in official.state_dict().items() if 'vision_tower' not in k}
    # The CLIP the checkpoint was trained with: a smaller input (grid 4) than the model's (8),
    # as ViT-L/14-336 (grid 24) against the 448 (grid 32) PixelLM runs at.
    clip = CLIPModel(CLIPConfig(
        vision_config=dict(vision, image_size=56),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=100, max_position_embeddings=16),
        projection_dim=16))
    return official, state, clip


@pytest.fixture(scope='module')
def tiny_target():
    return build_on_meta(tiny_model_cfg()).state_dict()


def _clip_vision(clip):
    return {k[len('vision_model.'):]: v for k, v in clip.state_dict().items()
            if k.startswith('vision_model.')}


# ----------------------------------------------------------------- LLaVA v1 -> HFCausalLM
def _llava_folder(folder, llama_cfg, clip_width, drop=()):
    """A LLaVA v1 folder: LLaMA weights + ``model.mm_projector`` (one Linear), llava config."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(2)
    llama = LlamaForCausalLM(LlamaConfig(**llama_cfg))
    hidden = llama.config.hidden_size
    state = dict(llama.state_dict())
    state['model.mm_projector.weight'] = torch.randn(hidden, clip_width)
    state['model.mm_projector.bias'] = torch.randn(hidden)
    for key in drop:
        del state[key]
    _write_sharded_bin(state, folder)
    config = llama.config.to_dict()
    config.update(model_type='llava', architectures=['LlavaLlamaForCausalLM'],
                  mm_vision_tower='openai/clip-vit-large-patch14', mm_hidden_size=clip_width,
                  mm_vision_select_layer=-2, mm_use_im_start_end=False, use_mm_proj=True)
    with open(osp.join(folder, 'config.json'), 'w') as f:
        json.dump(config, f)
    return llama, state


def test_llava_v1_folder_fills_the_llm_and_its_mm_projector_stays_out(tmp_path):
    llama_cfg, vision, _ = _tiny_dims()
    llava, state = _llava_folder(str(tmp_path), llama_cfg, vision['hidden_size'])
    cfg = tiny_model_cfg()
    with captured_log_records() as records:
        model = build_tiny(llm=dict(cfg['llm'], pretrained=str(tmp_path))).eval()
    ids = torch.randint(0, 1024, (1, 9))
    with torch.no_grad():
        ours = model.llm(model.llm.embed(ids))['logits'][..., :1024]
        torch.testing.assert_close(ours, llava.eval()(input_ids=ids).logits)
    # As in the official code, LLaVA's Linear projector is not used: PixelLM trains a new MLP.
    log = '\n'.join(r.getMessage() for r in records)
    assert 'model.mm_projector.weight' in log and 'not used' in log
    assert model.projector.layers[0].weight.shape == (2 * llama_cfg['hidden_size'],
                                                       vision['hidden_size'])
    llava_proj = state['model.mm_projector.weight']
    assert not any(p.shape == llava_proj.shape and torch.equal(p, llava_proj)
                   for p in model.state_dict().values())


def test_llava_folder_missing_an_llm_weight_is_refused(tmp_path):
    from pixellm.models.llms import HFCausalLM
    llama_cfg, vision, _ = _tiny_dims()
    _llava_folder(str(tmp_path), llama_cfg, vision['hidden_size'],
                  drop=('model.layers.1.mlp.up_proj.weight', ))
    with pytest.raises(ValueError, match=r'model\.layers\.1\.mlp\.up_proj\.weight'):
        HFCausalLM(pretrained=str(tmp_path), llm_config=dict(model_type='llama'))


# ----------------------------------------------------------------- official PixelLM -> PixelLM
def test_hf_folder_reader_handles_bin_and_safetensors_shards(tmp_path):
    from safetensors.torch import save_file
    state = {f'w{i}': torch.randn(3, i + 1) for i in range(5)}
    bin_dir, st_dir = tmp_path / 'bin', tmp_path / 'st'
    bin_dir.mkdir(), st_dir.mkdir()
    _write_sharded_bin(state, str(bin_dir), num_shards=3)
    weight_map = {}
    for i, keys in enumerate((['w0', 'w1'], ['w2', 'w3', 'w4'])):
        name = f'model-{i + 1:05d}-of-00002.safetensors'
        save_file({k: state[k] for k in keys}, str(st_dir / name))
        weight_map.update({k: name for k in keys})
    (st_dir / 'model.safetensors.index.json').write_text(json.dumps(dict(weight_map=weight_map)))
    for folder in (bin_dir, st_dir):
        loaded = load_hf_state_dict(str(folder))
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert len(checkpoint_files(str(bin_dir))) == 3
    assert load_hf_state_dict(str(st_dir), select=lambda k: k == 'w3').keys() == {'w3'}
    (st_dir / 'model-00002-of-00002.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match='model-00002-of-00002.safetensors'):
        load_hf_state_dict(str(st_dir))


def test_converted_official_checkpoint_computes_what_the_official_model_computes(
        tiny_official, tmp_path):
    official, state, clip = tiny_official
    src, clip_dir = tmp_path / 'hf_model', tmp_path / 'clip'
    src.mkdir()
    # transformers 4.31 checkpoints may carry the rotary buffers; they are dropped.
    state = dict(state, **{'model.layers.0.self_attn.rotary_emb.inv_freq': torch.rand(16)})
    _write_sharded_bin(state, str(src))
    clip.save_pretrained(str(clip_dir))
    dst = str(tmp_path / 'converted.pth')
    tool = load_tool('model_converters/pixellm_hf_to_pixellm')
    result = tool.main([str(src), dst, '--config', TINY_MODEL_CFG, '--clip', str(clip_dir)])
    ckpt = load_checkpoint_safely(dst)
    model = build_tiny(seed=5).eval()
    model.load_state_dict(ckpt['state_dict'], strict=True)

    # What was left out and what was set, by name.
    dropped = set(ckpt['meta']['dropped'])
    unused = {k for k in state if k.startswith('model.prompt_encoder.')
              and k.split('.')[2] in PROMPT_ENCODER_UNUSED}
    assert dropped == unused | {'model.layers.0.self_attn.rotary_emb.inv_freq'}
    assert torch.allclose(model.pixel_decoder.token_fusion, torch.full((T, ), 1 / (S * T)))
    assert torch.allclose(model.pixel_decoder.scale_fusion, torch.full((S, ), 1 / S))
    assert all(not torch.count_nonzero(v) for k, v in ckpt['state_dict'].items() if 'lora_B' in k)
    # Nothing else is lost: every kept official tensor is in the converted state dict.
    converted = list(ckpt['state_dict'].values())
    for key, value in state.items():
        if key in dropped:
            continue
        if 'embed_tokens' in key or 'lm_head' in key:  # split in base and added rows
            assert any(torch.equal(value[:1024], c) for c in converted), key
            assert any(torch.equal(value[1024:], c) for c in converted), key
        else:
            assert any(c.shape == value.shape and torch.equal(value, c) for c in converted), key

    # LLM: the same logits as the official LLaMA, codebook tokens included.
    ids = torch.tensor([[1, 17, 300, 1024, 1025, 1026, 1027, 1028, 1029, 5]])
    with torch.no_grad():
        ours = model.llm(model.llm.embed(ids))['logits']
        torch.testing.assert_close(ours, official(input_ids=ids).logits)
        x = torch.randn(2, 5, 64)
        torch.testing.assert_close(model.projector(x), official.model.mm_projector(x))
        torch.testing.assert_close(model.mask_projector(x), official.model.out_mm_projector(x))

    # CLIP: its own weights, the position table resized as the official --resize_vision_tower.
    clip_state = _clip_vision(clip)
    vm = model.vision_encoder.vision_model.state_dict()
    table = clip_state['embeddings.position_embedding.weight']  # 1 + 4x4 rows
    grid = table[:-1].t().reshape(1, -1, 4, 4)
    resized = F.interpolate(grid, (8, 8), mode='bilinear', align_corners=False)[0]
    expected = torch.cat([resized.flatten(1).t(), table[-1:]])
    torch.testing.assert_close(vm['embeddings.position_embedding.weight'], expected)
    for key, value in clip_state.items():
        if key not in ('embeddings.position_embedding.weight', 'embeddings.position_ids'):
            assert torch.equal(vm[key], value), key

    # Pixel decoder: the official multi-scale decoding of two targets.
    states = torch.randn(2, S, T, 128)
    feats = [torch.randn(1, 64, 64) for _ in range(S)]
    with torch.no_grad():
        ours = model.pixel_decoder([states], [model.mask_projector(f) for f in feats])[0]
        torch.testing.assert_close(ours, official_low_res(official, states, feats, 8),
                                   rtol=1e-4, atol=1e-4)
    assert result.filled.keys() == {k for k in ckpt['state_dict'] if 'lora_' in k} | {
        'pixel_decoder.token_fusion', 'pixel_decoder.scale_fusion'}

    # The converted model trains and predicts.
    model.train()
    losses = model(**make_batch(model, targets=(2, 1)), mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    model.max_new_tokens = 4
    with torch.no_grad():
        preds = model(**make_batch(model, targets=(1, )), mode='predict')
    assert preds[0].pred_instances.masks.shape[1:] == (40, 50)


def _mismatch(official_state, target, clip=None):
    with pytest.raises(CheckpointMismatchError) as info:
        convert_official_pixellm(official_state, target, clip=clip, source='hf_model')
    return info.value


def test_mismatched_checkpoints_stop_with_every_key_named(tiny_official, tiny_target):
    _, state, clip = tiny_official
    clip = _clip_vision(clip)
    state = dict(state)
    state['model.mm_projector.0.weight'] = torch.zeros(300, 64)
    state['model.visual_model.image_encoder.neck.0.weight'] = torch.zeros(256, 1280, 1, 1)
    state['model.mask_decoder.transformer.2.norm_final_attn.weight'] = torch.zeros(64)
    del state['model.mask_decoder.level_embed.weight']
    err = _mismatch(state, tiny_target, clip)
    assert err.wrong_shape == [('model.mm_projector.0.weight -> projector.layers.0.weight',
                                (300, 64), (256, 64))]
    assert 'model.visual_model.image_encoder.neck.0.weight' in err.unexpected
    assert ('model.mask_decoder.transformer.2.norm_final_attn.weight -> '
            'pixel_decoder.transformers.2.norm_final_attn.weight (not in the model)'
            in err.unexpected)
    assert err.missing == ['pixel_decoder.level_embed.weight']
    message = str(err)
    assert 'hf_model' in message and '(300, 64)' in message and 'level_embed' in message


def test_token_rows_and_clip_must_fit_the_model(tiny_official, tiny_target):
    _, state, clip = tiny_official
    clip = _clip_vision(clip)
    fewer = dict(state, **{'model.embed_tokens.weight': state['model.embed_tokens.weight'][:-2]})
    err = _mismatch(fewer, tiny_target, clip)
    assert [w[0].split(' ')[0] for w in err.wrong_shape] == ['model.embed_tokens.weight']
    assert err.wrong_shape[0][1:] == ((1028, 128), (1030, 128))
    # The official hf_model has no CLIP: without one the vision weights are missing, with a hint.
    err = _mismatch(state, tiny_target)
    assert err.missing and all(k.startswith('vision_encoder.') for k in err.missing)
    assert 'clip-vit-large-patch14-336' in str(err)


@pytest.mark.parametrize('name', ['pixellm_7b', 'pixellm_13b'])
def test_released_layouts_fill_the_7b_and_13b_models_exactly(name):
    """The official 7B/13B key set and shapes, built on the meta device, fill our model exactly."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = load_config(osp.join(REPO, 'configs', '_base_', 'models', f'{name}.py')).model
    target = build_on_meta(cfg).state_dict()
    llama = {k: v for k, v in cfg.llm.llm_config.items() if k != 'model_type'}
    with torch.device('meta'):
        # 32000 LLaMA rows + [SEG0]..[SEG5] + <im_start>, <im_end>, as the official tokenizer.
        official = official_pixellm(llama, 32000 + S * T + 2, 1024, 256, 8, 2048)
        clip = CLIPVisionModel(CLIPVisionConfig(**cfg.vision_encoder.vision_config))
    state = {k: v for k, v in official.state_dict().items()}
    clip_state = {k[len('vision_model.'):] if k.startswith('vision_model.') else k: v
                  for k, v in clip.state_dict().items()}
    result = convert_official_pixellm(state, target, clip=clip_state)
    out = result.state_dict
    assert out.keys() == target.keys()
    assert all(out[k].shape == target[k].shape and out[k].dtype == target[k].dtype
               for k in target)
    assert sorted(result.dropped) == sorted(
        k for k in state
        if k.startswith('model.prompt_encoder.') and k.split('.')[2] in PROMPT_ENCODER_UNUSED)
    assert out['pixel_decoder.token_fusion'].tolist() == pytest.approx([1 / 6] * 3)
    assert any('577 -> 1025 rows' in note for note in result.notes)


# ----------------------------------------------------------------- the official trainable set
# train_ds.py, with --resize_vision_tower_size 448: every parameter whose name contains one of these
# is unfrozen after peft wraps the model ('mm_projector' also matches 'out_mm_projector').
OFFICIAL_TRAINABLE = ('lm_head', 'embed_tokens', 'mask_decoder', 'text_hidden_fcs', 'mm_projector')
# Its find_linear_layers: LoRA goes on every nn.Linear whose name has a target and none of these.
OFFICIAL_LORA_EXCLUDED = ('visual_model', 'vision_tower', 'mm_projector', 'text_hidden_fcs',
                          'mask_decoder', 'image_feature_neck', 'prompt_encoder')
# Officially trainable but never reached by a loss in either code (SAM's mask heads 2-4 and its
# IoU head: PixelLM decodes with the first mask token); frozen here so DDP sees no unused weight.
NEVER_REACHED = ('mask_decoder.output_hypernetworks_mlps.1.', 'mask_decoder.output_hypernetworks_mlps.2.',
                 'mask_decoder.output_hypernetworks_mlps.3.', 'mask_decoder.iou_prediction_head.')


def official_trainable_set(official, lora_targets, r):
    """``{toolbox key: numel}`` of what train_ds.py trains, from the official module names."""
    from pixellm.models.converters.official_pixellm import map_official_key
    trained = {}
    for name, p in official.named_parameters():
        if any(x in name for x in OFFICIAL_TRAINABLE):
            trained[name] = p.numel()
    for name, module in official.named_modules():
        if (isinstance(module, nn.Linear) and any(t in name for t in lora_targets)
                and not any(x in name for x in OFFICIAL_LORA_EXCLUDED)):
            trained[f'{name}.lora_A'] = r * module.in_features
            trained[f'{name}.lora_B'] = module.out_features * r
    out, unreached = {}, 0
    for name, numel in trained.items():
        if any(x in name for x in NEVER_REACHED):
            unreached += numel
            continue
        if name.endswith(('.lora_A', '.lora_B')):
            module, kind = name.rsplit('.', 1)
            key = map_official_key(module + '.weight')[:-len('weight')] + kind + '.default.weight'
        else:
            key = map_official_key(name)
        assert key is not None, name
        out[key] = numel
    return out, unreached


@pytest.mark.parametrize('name', ['pixellm_7b_lora_8xb2_ga10_5k_mix', 'pixellm_13b_lora_8xb2_ga10_5k_mix'])
def test_recipes_train_what_the_official_train_ds_trains(name):
    """The recipe's trainable weights are the official rule applied to the official names."""
    from pixellm.models.converters.official_pixellm import canonical_key
    from pixellm.models.meta_build import count_parameters
    cfg = load_config(osp.join(REPO, 'configs', 'pixellm', f'{name}.py')).model
    model = build_on_meta(cfg)
    llama = {k: v for k, v in cfg.llm.llm_config.items() if k != 'model_type'}
    lora = cfg.llm.lora
    with torch.device('meta'):
        official = official_pixellm(llama, model.llm.vocab_size, 1024, 256, 8, 2048)
    expected, unreached = official_trainable_set(official, lora.target_modules, lora.r)
    # The official token tables hold every row; here they are the base table and the added rows.
    added = model.llm.vocab_size - model.llm.base_vocab_size
    hidden = llama['hidden_size']
    for table, rows in (('llm.model.model.embed_tokens.weight', 'llm.new_embed'),
                        ('llm.model.lm_head.weight', 'llm.new_head')):
        expected[table] -= added * hidden
        expected[rows] = added * hidden
    ours = {canonical_key(k): p.numel() for k, p in model.named_parameters() if p.requires_grad}
    assert sorted(ours) == sorted(expected)
    assert ours == expected
    _, trainable = count_parameters(model)
    assert trainable == sum(expected.values())
    # What the official run leaves at its initial values stays frozen here too.
    frozen = {canonical_key(k) for k, p in model.named_parameters() if not p.requires_grad}
    for key in ('pixel_decoder.image_feature_neck.0.weight', 'pixel_decoder.no_mask_embed.weight',
                'pixel_decoder.token_fusion', 'pixel_decoder.scale_fusion',
                'vision_encoder.vision_model.embeddings.position_embedding.weight'):
        assert key in frozen
    # LoRA r8 on q/v of every layer, the two full tables, the decoder, the projectors.
    layers = llama['num_hidden_layers']
    assert sum(v for k, v in expected.items() if 'lora_' in k) == layers * 2 * 8 * 2 * hidden
    assert unreached == 3 * (2 * (256 * 256 + 256) + 256 * 32 + 32) + (
        2 * (256 * 256 + 256) + 256 * 4 + 4)
