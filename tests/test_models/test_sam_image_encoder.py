"""SAM's image encoder: segment_anything's ViT re-derived (``lisa_fixtures``), freezing, loading."""
import copy

import pytest
import torch
from lisa_fixtures import random_state, sam_image_encoder, sam_shapes

from pixellm.models.converters import map_sam_key
from pixellm.models.vision_encoders import SAMImageEncoder
from pixellm.registry import MODELS

# 96 / 16 = a 6x6 grid: the 4x4 windows of block 0 need padding, block 1 attends globally.
VCFG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, output_channels=24,
            image_size=96, patch_size=16, window_size=4, global_attn_indexes=(1, ),
            num_pos_feats=12)
SAM = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1, ), window_size=4,
           image_size=96, patch_size=16, out_chans=24)


def encoder_from_official(official, **kwargs):
    enc = SAMImageEncoder(vision_config=VCFG, **kwargs)
    state = {}
    for key, value in official.items():
        if key.startswith('image_encoder.'):
            ours = map_sam_key(key)
            assert ours is not None and ours.startswith('mask_encoder.'), key
            state[ours[len('mask_encoder.'):]] = value
    enc.load_state_dict(state, strict=True)
    return enc


@pytest.mark.parametrize('attn', ['eager', 'sdpa'])
def test_features_are_segment_anythings_image_encoder(attn):
    official = random_state(sam_shapes(**SAM), seed=0)
    enc = encoder_from_official(official, attn_implementation=attn)
    images = torch.randn(2, 3, 96, 96)
    feats = enc(images)
    assert len(feats) == 1 and feats[0].shape == (2, 36, 24)
    expected = sam_image_encoder(official, images, num_heads=2, global_attn_indexes=(1, ),
                                 window_size=4, depth=2)
    torch.testing.assert_close(feats[0], expected.flatten(2).transpose(1, 2), rtol=1e-4,
                               atol=1e-4)


def test_frozen_by_default_and_reports_the_encoder_interface():
    enc = MODELS.build(dict(type='SAMImageEncoder', vision_config=VCFG))
    assert (enc.image_size, enc.patch_size, enc.grid_size, enc.embed_dim, enc.num_scales) == \
        (96, 16, 6, 24, 1)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    out = enc(torch.randn(1, 3, 96, 96, requires_grad=True))[0]
    assert out.grad_fn is None  # encoded without autograd, as LISA's get_visual_embs
    trained = SAMImageEncoder(vision_config=VCFG, frozen=False).train()
    assert trained.training and all(p.requires_grad for p in trained.parameters())
    assert trained(torch.randn(1, 3, 96, 96))[0].requires_grad
    assert SAMImageEncoder.fsdp_block_classes({}) == ('SamVisionLayer', )
    keep = enc.valid_patches([(96, 40), (17, 96)], torch.device('cpu'))
    assert keep.shape == (2, 6, 6)
    assert keep[0].sum() == 6 * 3 and keep[1].sum() == 2 * 6
    with pytest.raises(ValueError, match='96x96'):
        enc(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='vision_config'):
        SAMImageEncoder()


def test_fp16_runs_the_neck_in_float32_as_sam_does():
    official = random_state(sam_shapes(**SAM), seed=1)
    enc = encoder_from_official(official, torch_dtype='float16')
    assert all(p.dtype == torch.float16 for p in enc.parameters())
    torch.manual_seed(0)
    images = torch.randn(1, 3, 96, 96)
    out = enc(images)[0]
    assert out.dtype == torch.float16
    inner = enc.image_encoder
    with torch.no_grad():
        hidden = inner.patch_embed(images.half()) + inner.pos_embed
        for layer in inner.layers:
            hidden = layer(hidden)
        neck32 = copy.deepcopy(inner.neck).float()
        expected = neck32(hidden.float()).half().flatten(2).transpose(1, 2)
        half = inner.neck(hidden).flatten(2).transpose(1, 2)
    assert torch.equal(out, expected)
    assert not torch.equal(half, expected)  # the fp16 neck rounds differently


def test_a_sam_folder_loads_and_must_match_a_config_given_with_it(tmp_path):
    from transformers import SamConfig, SamModel
    torch.manual_seed(0)
    sam = SamModel(SamConfig(vision_config=VCFG)).eval()
    sam.save_pretrained(str(tmp_path))
    enc = SAMImageEncoder(pretrained=str(tmp_path), vision_config=VCFG)
    images = torch.randn(1, 3, 96, 96)
    expected = sam.get_image_embeddings(images)
    torch.testing.assert_close(enc(images)[0], expected.flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match='hidden_size=64 in the config but 32 in the checkpoint'):
        SAMImageEncoder(pretrained=str(tmp_path), vision_config=dict(VCFG, hidden_size=64))
