"""Released LISA checkpoints onto the toolbox's LISA components (``convert_official_lisa``).

The official key layout is written out in ``lisa_fixtures`` from LISA's source (not derived from
the toolbox's names). Tiny checkpoints with random values check that tensors land where they
should (by value, and by computing LISA's image encoder and mask head on the official tensors);
the LISA-7B and LISA-13B-llama2 layouts, built on the meta device, check that every key has a
place.
"""
import pytest
import torch
from lisa_fixtures import (ADDED, CLIP_VIT_L14, LLAMA_7B, LLAMA_13B, SAM_VIT_H, lisa_components,
                           lisa_low_res_masks, lisa_shapes, random_state, sam_image_encoder)

from pixellm.models.converters import canonical_key, clip_vision_weights, convert_official_lisa
from pixellm.models.export import CheckpointMismatchError

TINY_LLAMA = dict(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 image_size=28, patch_size=14)
TINY_SAM = dict(embed_dim=16, depth=2, num_heads=2, global_attn_indexes=(1, ), window_size=2,
                image_size=64, patch_size=16, out_chans=32, mlp_dim=64, iou_hidden=32)
TINY_DECODER = dict(mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)

def tiny_sam_vision():
    return dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                global_attn_indexes=(1, ), window_size=2, image_size=64, patch_size=16,
                output_channels=32, num_pos_feats=16)


def tiny_checkpoint(seed=0):
    """A tiny released-LISA state dict with random values, and separate CLIP weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    shapes = lisa_shapes(TINY_LLAMA['vocab_size'] + ADDED, 64, 96, 2, TINY_SAM, clip_hidden=32,
                         out_dim=32, head_dim=16)
    official = random_state(shapes, seed)
    torch.manual_seed(seed)
    clip = clip_vision_weights(CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).state_dict())
    return official, clip


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    model = lisa_components(TINY_LLAMA, TINY_CLIP, tiny_sam_vision(), TINY_DECODER,
                            lora=dict(r=4, alpha=8, dropout=0.0, target_modules=['q_proj',
                                                                                 'v_proj']))
    official, clip = tiny_checkpoint()
    return model, official, clip


def test_values_land_where_lisa_keeps_them_and_compute_what_lisa_computes(tiny):
    model, official, clip = tiny
    result = convert_official_lisa(official, model.state_dict(), clip=clip, source='LISA-tiny')
    model.load_state_dict(result.state_dict, strict=True)
    model.eval()
    o = official
    llm = model.llm.hf_model
    assert torch.equal(llm.get_input_embeddings().weight, o['model.embed_tokens.weight'][:40])
    assert torch.equal(model.llm.new_embed, o['model.embed_tokens.weight'][40:])
    assert torch.equal(llm.get_output_embeddings().weight, o['lm_head.weight'][:40])
    assert torch.equal(model.llm.new_head, o['lm_head.weight'][40:])
    ours = {canonical_key(k): v for k, v in model.state_dict().items()}
    assert torch.equal(ours['llm.model.model.layers.1.self_attn.q_proj.weight'],
                       o['model.layers.1.self_attn.q_proj.weight'])
    assert torch.equal(ours['llm.model.model.layers.0.mlp.down_proj.weight'],
                       o['model.layers.0.mlp.down_proj.weight'])
    assert torch.equal(model.projector.layers[0].weight, o['model.mm_projector.weight'])
    assert torch.equal(model.projector.layers[0].bias, o['model.mm_projector.bias'])
    assert torch.equal(model.pixel_decoder.text_hidden_fcs[2].weight,
                       o['model.text_hidden_fcs.0.2.weight'])
    sam = {k[len('model.visual_model.'):]: v for k, v in o.items()
           if k.startswith('model.visual_model.')}
    enc = model.mask_encoder.image_encoder
    assert torch.equal(enc.layers[0].attn.rel_pos_w, sam['image_encoder.blocks.0.attn.rel_pos_w'])
    assert torch.equal(enc.layers[1].layer_norm2.bias, sam['image_encoder.blocks.1.norm2.bias'])
    assert torch.equal(enc.neck.conv2.weight, sam['image_encoder.neck.2.weight'])
    prompt = model.pixel_decoder.prompt_encoder
    assert torch.equal(prompt.shared_embedding.positional_embedding,
                       sam['prompt_encoder.pe_layer.positional_encoding_gaussian_matrix'])
    assert torch.equal(prompt.mask_embed.conv3.bias, sam['prompt_encoder.mask_downscaling.6.bias'])
    dec = model.pixel_decoder.mask_decoder
    assert torch.equal(dec.iou_prediction_head.layers[0].weight,
                       sam['mask_decoder.iou_prediction_head.layers.1.weight'])
    assert torch.equal(dec.output_hypernetworks_mlps[2].proj_out.bias,
                       sam['mask_decoder.output_hypernetworks_mlps.2.layers.2.bias'])
    assert torch.equal(dec.upscale_conv2.weight, sam['mask_decoder.output_upscaling.3.weight'])
    assert torch.equal(
        dec.transformer.layers[1].cross_attn_image_to_token.k_proj.weight,
        sam['mask_decoder.transformer.layers.1.cross_attn_image_to_token.k_proj.weight'])
    vm = model.vision_encoder.vision_model
    assert torch.equal(vm.encoder.layers[1].self_attn.v_proj.weight,
                       clip['encoder.layers.1.self_attn.v_proj.weight'])

    # What was dropped, filled and split, with reasons.
    assert set(result.dropped) == {f'model.layers.{i}.self_attn.rotary_emb.inv_freq'
                                   for i in range(2)}
    assert all('rotary' in r for r in result.dropped.values())
    assert set(result.filled) == {k for k in model.state_dict() if '.lora_' in k}
    assert all(not v.any() for k, v in result.state_dict.items() if '.lora_B.' in k)
    assert any('rows [0, 40)' in n and 'llm.new_embed' in n for n in result.notes)

    # LISA's mask branch on the official tensors: SAM image encoder, then the [SEG]-prompted
    # mask decoder.
    torch.manual_seed(1)
    images = torch.randn(1, 3, 64, 64)
    states = torch.randn(2, 1, 1, 64)
    fcs = {k[len('model.text_hidden_fcs.0.'):]: v for k, v in o.items()
           if k.startswith('model.text_hidden_fcs.0.')}
    with torch.no_grad():
        feats = model.mask_encoder(images)
        masks = model.pixel_decoder([states], feats)[0]
        embedding = sam_image_encoder(sam, images, num_heads=2, global_attn_indexes=(1, ),
                                      window_size=2, depth=2)
        expected = lisa_low_res_masks(sam, fcs, states[:, 0], embedding, num_heads=2)
    torch.testing.assert_close(feats[0], embedding.flatten(2).transpose(1, 2), rtol=1e-4,
                               atol=1e-4)
    torch.testing.assert_close(masks, expected, rtol=1e-4, atol=1e-4)


def _mismatch(official, target, clip=None):
    with pytest.raises(CheckpointMismatchError) as info:
        convert_official_lisa(official, target, clip=clip, source='LISA-tiny')
    return info.value


def test_transposed_misnamed_and_missing_weights_are_all_named(tiny):
    model, official, clip = tiny
    target = model.state_dict()
    state = dict(official)
    state['model.mm_projector.weight'] = state['model.mm_projector.weight'].t()
    q = 'model.visual_model.mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj'
    state[q + '.weight'] = state[q + '.weight'].t()
    norm = 'model.visual_model.mask_decoder.transformer.layers.1.norm3.weight'
    state[norm.replace('norm3', 'norm_3')] = state.pop(norm)
    state['model.visual_model.image_encoder.blocks.2.norm1.weight'] = torch.zeros(16)
    state['model.mm_projector.0.weight'] = torch.zeros(64, 32)  # PixelLM's MLP layout
    err = _mismatch(state, target, clip)
    assert sorted(err.wrong_shape) == sorted([
        ('model.mm_projector.weight -> projector.layers.0.weight', (32, 64), (64, 32)),
        (q + '.weight -> pixel_decoder.mask_decoder.transformer.layers.0.'
         'cross_attn_token_to_image.q_proj.weight', (32, 16), (16, 32))])
    assert sorted(err.unexpected) == sorted([
        norm.replace('norm3', 'norm_3'), 'model.mm_projector.0.weight',
        'model.visual_model.image_encoder.blocks.2.norm1.weight -> '
        'mask_encoder.image_encoder.layers.2.layer_norm1.weight (not in the model)'])
    assert err.missing == ['pixel_decoder.mask_decoder.transformer.layers.1.layer_norm3.weight']
    assert 'LISA-tiny' in str(err)


def test_token_rows_and_clip_must_fit(tiny):
    model, official, clip = tiny
    target = model.state_dict()
    fewer = dict(official, **{'lm_head.weight': official['lm_head.weight'][:-1]})
    err = _mismatch(fewer, target, clip)
    assert [w[0].split(' ')[0] for w in err.wrong_shape] == ['lm_head.weight']
    assert err.wrong_shape[0][1:] == ((42, 64), (43, 64))
    # The released folders hold no CLIP: without one the vision weights are missing, with a hint.
    err = _mismatch(official, target)
    assert err.missing and all(k.startswith('vision_encoder.') for k in err.missing)
    assert 'openai/clip-vit-large-patch14' in str(err)
    # A folder that does hold CLIP (under LLaVA's names) needs no separate weights.
    with_clip = dict(official, **{f'model.vision_tower.vision_tower.vision_model.{k}': v
                                  for k, v in clip.items()})
    result = convert_official_lisa(with_clip, target)
    assert set(result.state_dict) == set(target)
    # ... and its CLIP wins over separate weights given as well.
    other = {k: v + 1 for k, v in clip.items()}
    result = convert_official_lisa(with_clip, target, clip=other)
    key = 'vision_encoder.vision_model.encoder.layers.0.mlp.fc1.weight'
    assert torch.equal(result.state_dict[key], clip['encoder.layers.0.mlp.fc1.weight'])
    assert any('separate CLIP weights were not used' in n for n in result.notes)


def test_tensors_take_the_models_dtypes(tiny):
    model, official, clip = tiny
    target = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    result = convert_official_lisa(official, target, clip=clip)
    assert all(v.dtype == torch.bfloat16 for v in result.state_dict.values())
    key = 'pixel_decoder.mask_decoder.mask_tokens.weight'
    assert torch.equal(result.state_dict[key],
                       official['model.visual_model.mask_decoder.mask_tokens.weight'].bfloat16())


@pytest.mark.parametrize('llama', [LLAMA_7B, LLAMA_13B], ids=['LISA-7B-v1', 'LISA-13B-llama2-v1'])
def test_released_layouts_fill_the_components_exactly(llama):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    with torch.device('meta'):
        model = lisa_components(llama, CLIP_VIT_L14, SAM_VIT_H)
        clip = clip_vision_weights(CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L14)).state_dict())
    target = model.state_dict()
    sam = dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31),
               window_size=14)
    shapes = lisa_shapes(32000 + ADDED, llama['hidden_size'], llama['intermediate_size'],
                         llama['num_hidden_layers'], sam)
    official = {k: torch.empty(s, device='meta') for k, s in shapes.items()}
    result = convert_official_lisa(official, target, clip=clip)
    out = result.state_dict
    assert out.keys() == target.keys()
    assert all(out[k].shape == target[k].shape and out[k].dtype == target[k].dtype
               for k in target)
    assert sorted(result.dropped) == sorted(k for k in official if k.endswith('.inv_freq'))
    assert result.filled == {}
    assert model.llm.vocab_size == 32003
