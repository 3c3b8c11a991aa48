"""CLIP vision encoder: resizing, layer selection against transformers, padding mask."""
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from pixellm.models.vision_encoders import CLIPVisionEncoder, interpolate_position_embedding

VCFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            image_size=56, patch_size=14)


def test_interpolation_keeps_cls_and_resizes_grid():
    weight = torch.randn(1 + 4 * 4, 8)
    out = interpolate_position_embedding(weight, 6, 'clip')
    assert out.shape == (1 + 36, 8)
    assert torch.equal(out[0], weight[0])
    grid = weight[1:].t().reshape(1, 8, 4, 4)
    expected = F.interpolate(grid, (6, 6), mode='bilinear', align_corners=False)[0]
    torch.testing.assert_close(out[1:], expected.flatten(1).t())
    # Same grid size is the identity on the patch rows.
    torch.testing.assert_close(interpolate_position_embedding(weight, 4)[1:], weight[1:])


def test_official_layout_treats_last_row_as_cls():
    weight = torch.randn(1 + 9, 4)
    out = interpolate_position_embedding(weight, 3, 'official')
    assert torch.equal(out[-1], weight[-1])
    torch.testing.assert_close(out[:-1], weight[:-1])
    with pytest.raises(ValueError, match='layout'):
        interpolate_position_embedding(weight, 3, 'other')


def test_features_match_transformers_hidden_states():
    torch.manual_seed(0)
    enc = CLIPVisionEncoder(vision_config=VCFG, select_layers=(-2, -4), mask_padding=False)
    ref = CLIPVisionModel(CLIPVisionConfig(**VCFG))
    ref.load_state_dict({k: v for k, v in enc.vision_model.state_dict().items()}, strict=True)
    images = torch.randn(2, 3, 56, 56)
    feats = enc(images)
    hidden = ref(pixel_values=images, output_hidden_states=True).hidden_states
    assert [f.shape for f in feats] == [(2, 16, 32)] * 2
    torch.testing.assert_close(feats[0], hidden[-2][:, 1:])
    torch.testing.assert_close(feats[1], hidden[-4][:, 1:])


def test_resized_encoder_runs_at_new_size_and_is_frozen():
    enc = CLIPVisionEncoder(vision_config=VCFG, image_size=84, select_layers=(-2,))
    assert enc.grid_size == 6 and enc.image_size == 84
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training  # a frozen tower stays in eval mode
    assert enc(torch.randn(1, 3, 84, 84))[0].shape == (1, 36, 32)
    with pytest.raises(ValueError, match='84x84'):
        enc(torch.randn(1, 3, 56, 56))


def test_padding_mask_makes_valid_patches_ignore_padding():
    torch.manual_seed(0)
    enc = CLIPVisionEncoder(vision_config=VCFG, select_layers=(-2,), mask_padding=True)
    a = torch.randn(1, 3, 56, 56)
    b = a.clone()
    b[..., 28:, :] = torch.randn(1, 3, 28, 56)  # change only the padded bottom half
    fa = enc(a, valid_hw=[(28, 56)])[0].view(1, 4, 4, -1)
    fb = enc(b, valid_hw=[(28, 56)])[0].view(1, 4, 4, -1)
    torch.testing.assert_close(fa[:, :2], fb[:, :2])
    # Without the mask the padding leaks into the valid patches.
    nomask = CLIPVisionEncoder(vision_config=VCFG, select_layers=(-2,), mask_padding=False)
    nomask.load_state_dict(enc.state_dict())
    assert not torch.allclose(nomask(a)[0].view(1, 4, 4, -1)[:, :2],
                              nomask(b)[0].view(1, 4, 4, -1)[:, :2])


def test_bad_select_layer_and_missing_weights_errors():
    with pytest.raises(ValueError, match='out of range'):
        CLIPVisionEncoder(vision_config=VCFG, select_layers=(-9,))
    with pytest.raises(ValueError, match='pretrained'):
        CLIPVisionEncoder()


def test_trained_tower_freezes_exactly_the_weights_that_never_run():
    # Layers -2 and -4 of 4: layers 0-2 run, layer 3 and the final norm never do.
    enc = CLIPVisionEncoder(vision_config=VCFG, select_layers=(-2, -4), frozen=False)
    sum(f.sum() for f in enc(torch.randn(2, 3, 56, 56))).backward()
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert trainable == with_grad
    assert any('.layers.2.' in n for n in trainable)
    assert not any('.layers.3.' in n or 'post_layernorm' in n for n in trainable)


def test_a_checkpoint_loads_and_must_match_a_config_given_with_it(tmp_path):
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**VCFG)).eval()
    clip.save_pretrained(str(tmp_path))
    enc = CLIPVisionEncoder(pretrained=str(tmp_path), vision_config=VCFG, select_layers=(-2,),
                            mask_padding=False)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = clip(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(enc(x)[0], expected)
    with pytest.raises(ValueError, match='hidden_size=64 in the config but 32 in the checkpoint, '
                       'patch_size=8 in the config but 14 in the checkpoint'):
        CLIPVisionEncoder(pretrained=str(tmp_path), vision_config=dict(VCFG, hidden_size=64,
                                                                        patch_size=8))


def test_checkpoint_table_is_resized_in_float32_then_the_tower_cast(tmp_path):
    """The official code resizes CLIP's float32 position table, then casts the tower to bf16."""
    small = dict(VCFG, num_hidden_layers=2, image_size=28)  # grid 2: a 5-row table
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**small))
    table = getattr(clip, 'vision_model', clip).embeddings.position_embedding.weight
    with torch.no_grad():
        # Values of order 100 with float32 detail: rounding to bf16 before resizing shows.
        table.copy_(100 * torch.randn_like(table))
    table = table.detach().clone()
    assert table.dtype == torch.float32 and table.shape == (5, 32)
    clip.save_pretrained(str(tmp_path))
    enc = CLIPVisionEncoder(pretrained=str(tmp_path), image_size=56, select_layers=(-2,),
                            pos_embed_layout='official', torch_dtype='bfloat16')
    # The official rule: the first g*g rows (CLS row 0 included) are the grid, the last row is
    # taken as CLS and goes last.
    grid = table[:4].t().reshape(1, 32, 2, 2)
    resized = F.interpolate(grid, (4, 4), mode='bilinear', align_corners=False)[0]
    expected = torch.cat([resized.flatten(1).t(), table[4:]]).to(torch.bfloat16)
    got = enc.vision_model.embeddings.position_embedding.weight
    assert got.shape == (17, 32) and got.dtype == torch.bfloat16
    assert torch.equal(got, expected)
    # Resizing the table after the bf16 cast gives other values.
    grid16 = table[:4].bfloat16().float().t().reshape(1, 32, 2, 2)
    resized16 = F.interpolate(grid16, (4, 4), mode='bilinear', align_corners=False)[0]
    late = torch.cat([resized16.flatten(1).t(), table[4:]]).to(torch.bfloat16)
    assert not torch.equal(got, late)
    assert all(p.dtype == torch.bfloat16 for p in enc.parameters())
    assert enc.grid_size == 4
    assert enc(torch.randn(1, 3, 56, 56))[0].dtype == torch.bfloat16
    # A random tower is cast as well.
    random = CLIPVisionEncoder(vision_config=small, select_layers=(-2,), torch_dtype='bfloat16')
    assert all(p.dtype == torch.bfloat16 for p in random.parameters())
