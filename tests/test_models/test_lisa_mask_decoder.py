"""LISA's mask head against LISA's arithmetic re-derived from its source (``lisa_fixtures``).

Official-layout weights (segment_anything names) are generated at tiny sizes, renamed onto the
decoder with the converter's key map, and the decoder's masks are compared with
``lisa_fixtures.lisa_low_res_masks``: plain torch following ``PromptEncoder.forward``,
``MaskDecoder.predict_masks`` and ``TwoWayTransformer.forward`` step by step on the official
tensors. So a wrong name in the map, a wrong eps, a missing positional encoding or a wrong
prompt all show as different masks.
"""
import pytest
import torch
from lisa_fixtures import (lisa_low_res_masks, lisa_postprocess_masks, random_state,
                           sam_shapes)

from pixellm.models.converters import map_lisa_key
from pixellm.models.pixel_decoders import LISAMaskDecoder
from pixellm.registry import MODELS

H, C, G, S = 48, 32, 4, 64  # LLM width, prompt width, embedding grid, encoder input
HEADS, MLP, IOU = 2, 64, 32
SAM = dict(embed_dim=16, depth=1, num_heads=2, global_attn_indexes=(0, ), window_size=2,
           image_size=S, patch_size=S // G, out_chans=C, mlp_dim=MLP, iou_hidden=IOU)
DECODER = dict(mlp_dim=MLP, num_attention_heads=HEADS, iou_head_hidden_dim=IOU)


def official_weights(seed=0):
    """Random SAM weights and ``text_hidden_fcs.0`` in the official layout."""
    sam = random_state(sam_shapes(**SAM), seed)
    fcs = random_state({'0.weight': (H, H), '0.bias': (H, ), '2.weight': (C, H),
                        '2.bias': (C, )}, seed + 1)
    return sam, fcs


def build_decoder(sam, fcs, tokens_per_scale=1, **kwargs):
    dec = LISAMaskDecoder(in_channels=H, feat_channels=C, grid_size=G, input_size=S,
                          tokens_per_scale=tokens_per_scale, mask_decoder_config=DECODER,
                          **kwargs)
    state = {}
    official = {f'model.visual_model.{k}': v for k, v in sam.items()
                if not k.startswith('image_encoder.')}
    official.update({f'model.text_hidden_fcs.0.{k}': v for k, v in fcs.items()})
    for key, value in official.items():
        ours = map_lisa_key(key)
        assert ours is not None and ours.startswith('pixel_decoder.'), key
        state[ours[len('pixel_decoder.'):]] = value
    dec.load_state_dict(state, strict=True)
    return dec.eval()


@pytest.mark.parametrize('attn', ['eager', 'sdpa'])
def test_masks_are_lisas_sam_decoding_of_the_seg_states(attn):
    sam, fcs = official_weights()
    dec = build_decoder(sam, fcs, attn_implementation=attn)
    torch.manual_seed(0)
    embeddings = torch.randn(2, C, G, G)
    states = [torch.randn(3, 1, 1, H), torch.randn(2, 1, 1, H)]
    feats = [embeddings.flatten(2).transpose(1, 2)]  # (B, g*g, C), row-major
    with torch.no_grad():
        out = dec(states, feats)
    assert [o.shape for o in out] == [(3, 4 * G, 4 * G), (2, 4 * G, 4 * G)]
    for i in range(2):
        expected = lisa_low_res_masks(sam, fcs, states[i][:, 0], embeddings[i:i + 1], HEADS)
        torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-5)
    # Each target is decoded on its own image: the same states on the other image differ.
    other = lisa_low_res_masks(sam, fcs, states[0][:, 0], embeddings[1:2], HEADS)
    assert not torch.allclose(out[0], other, atol=1e-3)


def test_several_tokens_per_target_are_all_its_sparse_prompts():
    sam, fcs = official_weights(seed=3)
    dec = build_decoder(sam, fcs, tokens_per_scale=2, attn_implementation='eager')
    torch.manual_seed(1)
    embeddings = torch.randn(1, C, G, G)
    states = torch.randn(2, 1, 2, H)
    with torch.no_grad():
        out = dec([states], [embeddings.flatten(2).transpose(1, 2)])[0]
    torch.testing.assert_close(out, lisa_low_res_masks(sam, fcs, states[:, 0], embeddings, HEADS),
                               rtol=1e-5, atol=1e-5)


def test_images_without_targets_and_batches_without_any():
    sam, fcs = official_weights()
    dec = build_decoder(sam, fcs).train()
    torch.manual_seed(0)
    feats = [torch.randn(3, G * G, C, requires_grad=True)]
    states = [torch.randn(0, 1, 1, H), torch.randn(2, 1, 1, H), torch.randn(0, 1, 1, H)]
    out = dec(states, feats)
    assert [tuple(o.shape) for o in out] == [(0, 16, 16), (2, 16, 16), (0, 16, 16)]
    assert out[0].grad_fn is not None and out[2].grad_fn is not None  # zero-weight graphs
    alone = dec([states[1]], [feats[0][1:2]])[0]
    torch.testing.assert_close(out[1], alone)
    # A batch without a single target still reaches every trainable weight (zero gradients) and
    # the features, so DDP finds no unused parameter.
    empty = dec([states[0], states[2]], [feats[0][:2]])
    assert [tuple(o.shape) for o in empty] == [(0, 16, 16), (0, 16, 16)]
    sum(o.sum() for o in empty).backward()
    trainable = [(n, p) for n, p in dec.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for _, p in trainable)
    assert feats[0].grad is not None and not feats[0].grad.any()


def test_trains_what_lisa_trains_and_every_trainable_weight_gets_a_gradient():
    sam, fcs = official_weights()
    dec = build_decoder(sam, fcs).train()
    trainable = {n for n, p in dec.named_parameters() if p.requires_grad}
    # train_ds.py: text_hidden_fcs and mask_decoder; the prompt encoder stays frozen.
    assert {n.split('.')[0] for n in trainable} == {'text_hidden_fcs', 'mask_decoder'}
    assert not any(n.startswith('prompt_encoder.') for n in trainable)
    # No loss reaches the IoU head or the mask heads 2-4 (multimask_output=False).
    assert not any('iou_prediction_head' in n or 'output_hypernetworks_mlps.1.' in n
                   for n in trainable)
    out = dec([torch.randn(2, 1, 1, H)], [torch.randn(1, G * G, C)])
    out[0].square().mean().backward()
    with_grad = {n for n, p in dec.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    frozen = build_decoder(sam, fcs, train_mask_decoder=False)
    assert {n.split('.')[0] for n, p in frozen.named_parameters()
            if p.requires_grad} == {'text_hidden_fcs'}


def test_postprocess_cuts_the_padding_as_lisa_does():
    sam, fcs = official_weights()
    dec = build_decoder(sam, fcs)
    torch.manual_seed(0)
    low_res = torch.randn(2, 16, 16)
    valid_hw, ori = (40, 64), (50, 80)  # a 50x80 image resized to 40x64 and padded to 64x64
    out = dec.postprocess(low_res, valid_hw, ori)
    assert out.shape == (2, 50, 80)
    torch.testing.assert_close(out, lisa_postprocess_masks(low_res, S, valid_hw, ori))
    # What lies well inside the padding does not reach the output.
    changed = low_res.clone()
    changed[:, 12:] = 100.0
    torch.testing.assert_close(dec.postprocess(changed, valid_hw, ori), out)


def test_registered_and_bad_inputs_raise():
    dec = MODELS.build(dict(type='LISAMaskDecoder', in_channels=H, feat_channels=C,
                            grid_size=G, input_size=S, mask_decoder_config=DECODER))
    assert isinstance(dec, LISAMaskDecoder) and dec.low_res_size == 16
    # Not loaded from SAM, the Fourier frequencies are N(0, 1) as SAM draws them.
    wide = LISAMaskDecoder(in_channels=H, feat_channels=256, grid_size=G, input_size=S)
    assert 0.8 < wide.prompt_encoder.shared_embedding.positional_embedding.std() < 1.25
    with pytest.raises(ValueError, match='one image embedding'):
        dec([torch.randn(1, 1, 1, H)], [torch.randn(1, G * G, C)] * 2)
    with pytest.raises(ValueError, match=r'expected \(B, 16, 32\)'):
        dec([torch.randn(1, 1, 1, H)], [torch.randn(1, 9, C)])
    with pytest.raises(ValueError, match='codebook has 1 scale'):
        dec([torch.randn(1, 1, 2, H)], [torch.randn(1, G * G, C)])
    with pytest.raises(ValueError, match='num_scales=1'):
        LISAMaskDecoder(in_channels=H, feat_channels=C, grid_size=G, input_size=S, num_scales=2)


def test_a_sam_folder_fills_the_prompt_encoder_and_mask_decoder(tmp_path):
    from transformers import SamConfig, SamModel
    config = SamConfig(
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           output_channels=C, image_size=S, patch_size=S // G, window_size=2,
                           global_attn_indexes=[0], num_pos_feats=C // 2),
        prompt_encoder_config=dict(hidden_size=C, image_size=S, patch_size=S // G),
        mask_decoder_config=dict(DECODER, hidden_size=C))
    torch.manual_seed(0)
    sam = SamModel(config).eval()
    sam.save_pretrained(str(tmp_path))
    dec = LISAMaskDecoder(in_channels=H, feat_channels=C, grid_size=G, input_size=S,
                          mask_decoder_config=DECODER, pretrained=str(tmp_path))
    ours = dec.state_dict()
    for key, value in sam.state_dict().items():
        if key.startswith(('prompt_encoder.', 'mask_decoder.')):
            assert torch.equal(ours[key], value), key
    # The grid encoding is the one SamModel gives its mask decoder.
    torch.testing.assert_close(dec.dense_positional_encoding(),
                               sam.get_image_wide_positional_embeddings())
    bad = SamModel(SamConfig(vision_config=config.vision_config,
                             prompt_encoder_config=config.prompt_encoder_config,
                             mask_decoder_config=dict(DECODER, hidden_size=C, mlp_dim=32)))
    bad.save_pretrained(str(tmp_path / 'bad'))
    with pytest.raises(ValueError, match='wrong shapes'):
        LISAMaskDecoder(in_channels=H, feat_channels=C, grid_size=G, input_size=S,
                        mask_decoder_config=DECODER, pretrained=str(tmp_path / 'bad'))
