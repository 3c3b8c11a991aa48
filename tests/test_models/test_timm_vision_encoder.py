"""TimmVisionEncoder: block taps against blocks run by hand and against CLIPVisionEncoder, padding
mask, freezing, errors, loaded weights, FSDP blocks, and PixelLM built around it."""
import pytest
import timm
import torch
from conftest import make_batch, tiny_model_cfg

from pixellm.engine.fsdp import declared_block_classes
from pixellm.models.vision_encoders import CLIPVisionEncoder, TimmVisionEncoder
from pixellm.registry import MODELS

TINY = dict(depth=4, embed_dim=64, num_heads=2)
# name -> image_size (4x4 patch grid)
ARCHS = {
    'vit_large_patch14_clip_quickgelu_336': 56,   # OpenAI CLIP ViT-L/14-336: class token
    'vit_base_patch16_siglip_224': 64,            # SigLIP: no class token, attention-pool head
    'eva02_base_patch14_224': 56,                 # EVA02: rotary position embedding, SwiGLU
    'vit_small_patch14_reg4_dinov2': 56,          # DINOv2: class token and 4 register tokens
}


def tiny_kwargs(name):
    # DINOv2's layer scale starts at 1e-5, which would leave every block output close to its
    # input: at 1 the blocks (and a wrong tap or a leak through the padding) show.
    return dict(TINY, init_values=1.0) if 'dinov2' in name else TINY


def tiny(name, **kwargs):
    kwargs.setdefault('image_size', ARCHS[name])
    kwargs.setdefault('model_kwargs', tiny_kwargs(name))
    return TimmVisionEncoder(name, **kwargs)


def block_outputs_by_hand(name, encoder, images):
    """Every block output of an unpruned timm model holding ``encoder``'s weights, computed by
    running its blocks one by one, patch tokens only; entry ``k - 1`` is block ``k``'s output."""
    ref = timm.create_model(name, img_size=ARCHS[name], num_classes=0, **tiny_kwargs(name)).eval()
    missing, unexpected = ref.load_state_dict(encoder.vision_model.state_dict(), strict=False)
    assert not unexpected
    # The encoder holds no block past the deepest tap, no final norm and no pooling head.
    assert missing and all(k.startswith(('blocks.3.', 'norm.', 'fc_norm.', 'attn_pool.', 'head'))
                           for k in missing), missing
    with torch.no_grad():
        x = ref.patch_embed(images)
        if name.startswith('eva02'):
            x, rope = ref._pos_embed(x)
            run = [lambda t, b=b: b(t, rope=rope) for b in ref.blocks]
        else:
            x = ref._pos_embed(x)
            run = list(ref.blocks)
        x = ref.norm_pre(x)
        outputs = []
        for block in run:
            x = block(x)
            outputs.append(x[:, ref.num_prefix_tokens:])
    return outputs


@pytest.mark.parametrize('name', sorted(ARCHS))
def test_taps_are_the_selected_block_outputs(name):
    torch.manual_seed(0)
    # Of 4 blocks: -2 is block 3, -4 block 1, 2 block 2, -1 block 4 (Hugging Face's numbering).
    enc = tiny(name, select_layers=(-2, -4, 2), mask_padding=False)
    size = ARCHS[name]
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats = enc(images)
    assert [f.shape for f in feats] == [(2, 16, 64)] * 3
    assert (enc.image_size, enc.grid_size, enc.embed_dim, enc.num_scales) == (size, 4, 64, 3)
    outputs = block_outputs_by_hand(name, enc, images)
    for got, block in zip(feats, (3, 1, 2)):
        torch.testing.assert_close(got, outputs[block - 1])
    last = tiny(name, select_layers=(-1, ), mask_padding=False)
    with torch.no_grad():
        torch.testing.assert_close(last(images)[0], block_outputs_by_hand(name, last, images)[3])


def clip_weights_as_timm(clip_state):
    """A Hugging Face CLIP vision tower's state dict in the layout of timm's CLIP ViTs."""
    out = {'cls_token': clip_state['embeddings.class_embedding'][None, None],
           'patch_embed.proj.weight': clip_state['embeddings.patch_embedding.weight'],
           'pos_embed': clip_state['embeddings.position_embedding.weight'][None],
           'norm_pre.weight': clip_state['pre_layrnorm.weight'],
           'norm_pre.bias': clip_state['pre_layrnorm.bias']}
    names = dict(layer_norm1='norm1', layer_norm2='norm2', mlp='mlp', **{'self_attn.out_proj':
                                                                          'attn.proj'})
    for key, value in clip_state.items():
        if not key.startswith('encoder.layers.'):
            continue
        index, rest = key[len('encoder.layers.'):].split('.', 1)
        if rest.startswith('self_attn.q_proj.'):
            kind = rest.rsplit('.', 1)[1]
            out[f'blocks.{index}.attn.qkv.{kind}'] = torch.cat([
                clip_state[f'encoder.layers.{index}.self_attn.{p}_proj.{kind}']
                for p in 'qkv'])
        for hf, tm in names.items():
            if rest.startswith(hf + '.'):
                out[f'blocks.{index}.{tm}{rest[len(hf):]}'] = value
    return out


def test_select_layers_pick_what_clip_vision_encoder_picks_and_mask_the_same():
    """One CLIP tower in both encoders: the same select_layers give the same features, with and
    without padding, so the numbering and the padding mask are CLIPVisionEncoder's."""
    torch.manual_seed(0)
    vcfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                image_size=56, patch_size=14)
    clip = CLIPVisionEncoder(vision_config=vcfg, select_layers=(-2, -4, 1))
    timm_enc = TimmVisionEncoder(
        'vit_base_patch16_clip_quickgelu_224', image_size=56, select_layers=(-2, -4, 1),
        model_kwargs=dict(patch_size=14, depth=4, embed_dim=32, num_heads=4, mlp_ratio=2.0))
    state = clip_weights_as_timm(clip.vision_model.state_dict())
    missing, unexpected = timm_enc.vision_model.load_state_dict(state, strict=False)
    # Every weight of the (pruned) timm tower comes from CLIP; CLIP's 4th layer is not needed.
    assert not missing
    assert set(unexpected) == {f'blocks.3.{k}' for k in timm_enc.vision_model.blocks[0].state_dict()}
    images = torch.randn(3, 3, 56, 56)
    valid_hw = [(56, 56), (20, 56), (56, 15)]
    with torch.no_grad():
        for hw in (None, valid_hw):
            for got, want in zip(timm_enc(images, hw), clip(images, hw)):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_valid_patches_and_padding_mask():
    torch.manual_seed(0)
    enc = tiny('vit_base_patch16_siglip_224', select_layers=(-2, ))  # 16-pixel patches, 4x4 grid
    keep = enc.valid_patches([(64, 17), (16, 64), (1, 1)], torch.device('cpu'))
    assert keep.dtype == torch.bool and keep.shape == (3, 4, 4)
    expected = torch.zeros(3, 4, 4, dtype=torch.bool)
    expected[0, :, :2] = True   # 17 pixels wide: 2 columns, the second partly padded
    expected[1, :1, :] = True
    expected[2, 0, 0] = True    # every image keeps one patch
    assert torch.equal(keep, expected)
    # With one prefix token, none, and five (class + registers), which all stay visible.
    for name in ('vit_large_patch14_clip_quickgelu_336', 'vit_base_patch16_siglip_224',
                 'vit_small_patch14_reg4_dinov2'):
        size = ARCHS[name]
        masked = tiny(name, select_layers=(-2, -4))
        a = torch.randn(1, 3, size, size)
        b = a.clone()
        b[..., size // 2:, :] = torch.randn(1, 3, size - size // 2, size)  # the padded half
        hw = [(size // 2, size)]
        with torch.no_grad():
            for fa, fb in zip(masked(a, hw), masked(b, hw)):
                torch.testing.assert_close(fa.view(1, 4, 4, -1)[:, :2], fb.view(1, 4, 4, -1)[:, :2])
            # Without the mask the padding leaks into the valid patches.
            masked.mask_padding = False
            fa, fb = masked(a, hw)[0], masked(b, hw)[0]
        assert not torch.allclose(fa.view(1, 4, 4, -1)[:, :2], fb.view(1, 4, 4, -1)[:, :2])


def test_frozen_stays_in_eval_and_a_trained_tower_has_no_idle_weight():
    enc = tiny('vit_base_patch16_siglip_224', select_layers=(-2, -4))
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training and not enc.vision_model.training
    trained = tiny('vit_base_patch16_siglip_224', select_layers=(-2, -4), frozen=False)
    trained.train()
    assert trained.training and trained.vision_model.training
    # Blocks 1-3 of 4 run; block 4, the final norm and SigLIP's attention pool were removed.
    model = trained.vision_model
    assert len(model.blocks) == 3 and model.attn_pool is None
    sum(f.sum() for f in trained(torch.randn(2, 3, 64, 64), [(64, 40), (30, 64)])).backward()
    params = dict(trained.named_parameters())
    assert params and all(p.requires_grad and p.grad is not None for p in params.values())


def test_bad_names_layers_and_sizes_are_refused():
    with pytest.raises(ValueError, match=r"has no model 'vit_base_patch16_siglp_224'\. Closest "
                       r'timm names: vit_base_patch16_siglip_224'):
        TimmVisionEncoder('vit_base_patch16_siglp_224')
    with pytest.raises(TypeError, match=r"'resnet18' \(ResNet\) is not a ViT"):
        TimmVisionEncoder('resnet18')
    with pytest.raises(ValueError, match=r'select layer 0 is out of range .* 4 blocks \(valid: '
                       r'1\.\.4 or -4\.\.-1'):
        tiny('vit_base_patch16_siglip_224', select_layers=(-2, 0))
    with pytest.raises(ValueError, match='select layer -5 is out of range'):
        tiny('vit_base_patch16_siglip_224', select_layers=(-5, ))
    with pytest.raises(ValueError, match='image_size 60 is not a multiple of the patch size 16'):
        tiny('vit_base_patch16_siglip_224', image_size=60)
    enc = tiny('vit_base_patch16_siglip_224', select_layers=(-2, ))
    with pytest.raises(ValueError, match='64x64'):
        enc(torch.randn(1, 3, 48, 48))


def test_mask_padding_needs_forward_intermediates_with_attn_mask(monkeypatch):
    from timm.models.vision_transformer import VisionTransformer
    original = VisionTransformer.forward_intermediates

    def without_attn_mask(self, x, indices=None, norm=False, stop_early=False, output_fmt='NCHW',
                          intermediates_only=False):
        return original(self, x, indices=indices, norm=norm, stop_early=stop_early,
                        output_fmt=output_fmt, intermediates_only=intermediates_only)

    monkeypatch.setattr(VisionTransformer, 'forward_intermediates', without_attn_mask)
    with pytest.raises(ValueError, match='takes no attn_mask.*set mask_padding=False'):
        tiny('vit_base_patch16_siglip_224', select_layers=(-2, ))
    enc = tiny('vit_base_patch16_siglip_224', select_layers=(-2, ), mask_padding=False)
    assert enc(torch.randn(1, 3, 64, 64), [(30, 64)])[0].shape == (1, 16, 64)


def test_checkpoint_file_loads_resized_and_survives_init_weights(tmp_path):
    name = 'vit_large_patch14_clip_quickgelu_336'
    torch.manual_seed(1)
    source = timm.create_model(name, img_size=56, num_classes=0, **TINY).eval()
    path = tmp_path / 'tower.pth'
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)  # any other draw: the weights must come from the file
    enc = tiny(name, checkpoint_path=str(path), select_layers=(-2, -4))
    enc.init_weights()  # as the runner does before training: must not redraw the loaded weights
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = source.forward_intermediates(images, indices=[2, 0], output_fmt='NLC',
                                            intermediates_only=True)
        got = enc(images)
    torch.testing.assert_close(got[0], want[1])  # block 3 (timm index 2)
    torch.testing.assert_close(got[1], want[0])  # block 1
    # At another size timm resamples the position table to the 6x6 grid; the blocks are the file's.
    big = tiny(name, checkpoint_path=str(path), image_size=84, select_layers=(-2, ))
    assert big.grid_size == 6 and big.vision_model.pos_embed.shape == (1, 1 + 36, 64)
    assert torch.equal(big.vision_model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert big(torch.randn(1, 3, 84, 84))[0].shape == (1, 36, 64)


def test_torch_dtype_casts_the_tower():
    enc = tiny('eva02_base_patch14_224', select_layers=(-2, ), torch_dtype='bfloat16')
    assert all(p.dtype == torch.bfloat16 for p in enc.parameters())
    assert enc(torch.randn(1, 3, 56, 56), [(56, 30)])[0].dtype == torch.bfloat16


def test_fsdp_block_classes_come_from_the_architecture():
    from timm.models.vision_transformer import ParallelScalingBlock
    # Full-size models, built on the meta device: no memory, no download.
    assert TimmVisionEncoder.fsdp_block_classes(
        dict(model_name='vit_large_patch14_clip_quickgelu_336.openai')) == ('Block', )
    assert TimmVisionEncoder.fsdp_block_classes(
        dict(model_name='eva02_base_patch14_224', model_kwargs=TINY)) == ('EvaBlock', )
    assert TimmVisionEncoder.fsdp_block_classes(
        dict(model_name='vit_base_patch16_siglip_224',
             model_kwargs=dict(block_fn=ParallelScalingBlock))) == ('ParallelScalingBlock', )


def pixellm_cfg(**encoder):
    encoder = dict(type='TimmVisionEncoder', model_name='vit_base_patch16_siglip_224',
                   image_size=112, model_kwargs=dict(TINY, patch_size=14),
                   select_layers=(-2, -4), **encoder)
    return tiny_model_cfg(vision_encoder=encoder)


def test_pixellm_trains_and_predicts_with_a_timm_encoder():
    torch.manual_seed(0)
    model = MODELS.build(pixellm_cfg(frozen=False))
    model.init_weights()
    enc = model.vision_encoder
    assert isinstance(enc, TimmVisionEncoder) and enc.grid_size == 8
    assert model.pixel_decoder.grid_size == 8 and model.codebook.num_scales == 2
    assert model.projector.in_channels == 64
    model.train()
    data = make_batch(model, targets=(2, 0, 1))
    losses = model(**data, mode='loss')
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    encoder_grads = [p.grad for p in enc.parameters()]
    assert encoder_grads and all(g is not None and g.abs().sum() > 0 for g in encoder_grads)
    model.eval()
    with torch.no_grad():
        preds = model(**make_batch(model, targets=(1, 2)), mode='predict')
    assert len(preds) == 2
    for pred in preds:
        masks = pred.pred_instances.masks
        assert masks.shape[1:] == tuple(pred.metainfo['ori_shape'])
    # --fsdp finds the timm blocks in the model config, next to the LLM's.
    declared = {name: blocks for _, name, blocks in declared_block_classes(pixellm_cfg())}
    assert declared['TimmVisionEncoder'] == ('Block', )


def test_offline_builds_never_read_timm_weights():
    from pixellm.models.meta_build import build_on_meta, offline_model_cfg
    cfg = pixellm_cfg(pretrained=True, checkpoint_path='/nonexistent/tower.pth')
    offline = offline_model_cfg(cfg)['vision_encoder']
    assert offline['pretrained'] is False and 'checkpoint_path' not in offline
    model = build_on_meta(cfg)
    assert model.vision_encoder.vision_model.pos_embed.device.type == 'meta'


def test_export_rebuilds_the_timm_tower_without_its_weight_source(tmp_path):
    from pixellm.models import export_pixellm, load_exported
    cfg = pixellm_cfg(pretrained=True, checkpoint_path=str(tmp_path / 'never_read.pth'),
                      frozen=False)
    offline = dict(cfg, vision_encoder=dict(cfg['vision_encoder'], pretrained=False,
                                            checkpoint_path=None))
    torch.manual_seed(0)
    model = MODELS.build(offline).eval()
    with torch.no_grad():
        for p in model.vision_encoder.parameters():  # weights no fresh build would have
            p.add_(0.1 * torch.randn_like(p))
    info = export_pixellm(model, cfg, str(tmp_path / 'export'))
    encoder = info['model']['vision_encoder']
    assert encoder['pretrained'] is False and encoder['checkpoint_path'] is None
    assert encoder['image_size'] == 112
    reloaded = load_exported(str(tmp_path / 'export'))
    state = model.vision_encoder.state_dict()
    for key, value in reloaded.vision_encoder.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize('name', sorted(ARCHS))
def test_flop_formula_matches_flop_counter(name):
    """The benchmark's count of a timm ViT (patch embedding, every held block's linears and
    attention over patches and prefix tokens) equals torch's FlopCounterMode, frozen (forward
    only) and trained (forward and backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from pixellm.analysis.flops import component_flops
    for frozen in (True, False):
        enc = tiny(name, select_layers=(-2, -4), frozen=frozen).train()
        size = enc.image_size
        images = torch.randn(2, 3, size, size)
        with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            feats = enc(images, [(size, size), (size - 20, size)])
            if not frozen:
                sum(f.sum() for f in feats).backward()
        analytic = component_flops(enc, 'vision_encoder', 2, training=not frozen)
        assert counter.get_total_flops() == pytest.approx(sum(analytic.values()), rel=1e-6)
