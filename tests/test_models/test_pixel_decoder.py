"""Pixel decoder: shapes, coarse-to-fine fusion, trainable fusion weights, post-processing."""
import pytest
import torch
import torch.nn.functional as F

from pixellm.models.pixel_decoders import PixelDecoder, PositionEmbeddingRandom


def make(num_scales=2, tokens=3):
    torch.manual_seed(0)
    return PixelDecoder(in_channels=16, feat_channels=24, grid_size=4, input_size=56,
                        num_scales=num_scales, tokens_per_scale=tokens, embed_dim=32, depth=2,
                        num_heads=4, mlp_dim=64)


def test_shapes_per_image_including_zero_targets():
    dec = make()
    states = [torch.randn(3, 2, 3, 16), torch.randn(0, 2, 3, 16)]
    feats = [torch.randn(2, 16, 24) for _ in range(2)]
    out = dec(states, feats)
    assert dec.low_res_size == 16
    assert out[0].shape == (3, 16, 16) and out[1].shape == (0, 16, 16)
    assert make(num_scales=1).low_res_size == 8


def test_fusion_weights_are_trained_parameters():
    dec = make()
    names = dict(dec.named_parameters())
    assert 'token_fusion' in names and 'scale_fusion' in names
    torch.testing.assert_close(dec.token_fusion.data, torch.full((3,), 1 / 3))
    out = dec([torch.randn(2, 2, 3, 16)], [torch.randn(1, 16, 24) for _ in range(2)])
    out[0].sum().backward()
    assert dec.token_fusion.grad is not None and dec.token_fusion.grad.abs().sum() > 0
    assert dec.scale_fusion.grad is not None and dec.scale_fusion.grad.abs().sum() > 0
    # Every trainable weight gets a gradient (DDP needs no unused trainable parameters).
    missing = [n for n, p in dec.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # Unlike the official plain lists, the weights are saved with the model.
    assert {'token_fusion', 'scale_fusion'} <= set(dec.state_dict())


def test_output_is_the_weighted_sum_of_levels():
    dec = make()
    states = [torch.randn(2, 2, 3, 16)]
    feats = [torch.randn(1, 16, 24) for _ in range(2)]
    with torch.no_grad():
        dec.scale_fusion.copy_(torch.tensor([1.0, 0.0]))
        only_coarse = dec(states, feats)[0]
        dec.scale_fusion.copy_(torch.tensor([0.0, 1.0]))
        only_fine = dec(states, feats)[0]
        dec.scale_fusion.copy_(torch.tensor([0.3, 0.7]))
        mixed = dec(states, feats)[0]
    torch.testing.assert_close(mixed, 0.3 * only_coarse + 0.7 * only_fine, atol=1e-5, rtol=1e-4)


def test_postprocess_crops_padding_then_resizes():
    dec = make()
    low = torch.randn(2, 16, 16)
    out = dec.postprocess(low, valid_hw=(28, 56), ori_shape=(30, 60))
    up = F.interpolate(low[:, None], (56, 56), mode='bilinear', align_corners=False)
    expected = F.interpolate(up[..., :28, :56], (30, 60), mode='bilinear', align_corners=False)
    torch.testing.assert_close(out, expected[:, 0])
    assert dec.postprocess(low[:0], (28, 56), (30, 60)).shape == (0, 30, 60)


def test_mismatches_raise_clear_errors():
    dec = make()
    with pytest.raises(ValueError, match='codebook has 2 scale.*expects 2 x 3'):
        dec([torch.randn(1, 2, 2, 16)], [torch.randn(1, 16, 24)] * 2)
    with pytest.raises(ValueError, match='feature scale'):
        dec([torch.randn(1, 2, 3, 16)], [torch.randn(1, 16, 24)])
    with pytest.raises(ValueError, match='tokens, expected 4x4'):
        dec([torch.randn(1, 2, 3, 16)], [torch.randn(1, 9, 24)] * 2)


def test_random_fourier_encoding_shape_and_range():
    pe = PositionEmbeddingRandom(8)(size=(3, 5))
    assert pe.shape == (16, 3, 5)
    assert pe.abs().max() <= 1.0


def test_batch_without_targets_still_reaches_every_trainable_weight():
    dec = make()
    feats = [torch.randn(2, 16, 24, requires_grad=True) for _ in range(2)]
    out = dec([torch.randn(0, 2, 3, 16), torch.randn(0, 2, 3, 16)], feats)
    assert [o.shape for o in out] == [(0, 16, 16), (0, 16, 16)]
    (out[0].sum() + out[1].sum() + sum(o.sum() * 0 for o in out)).backward()
    missing = [n for n, p in dec.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] and feats[0].grad is not None


def test_train_neck_false_freezes_neck_and_dense_embedding_as_officially():
    dec = PixelDecoder(in_channels=16, feat_channels=24, grid_size=4, input_size=56,
                       embed_dim=32, num_heads=4, mlp_dim=64, train_neck=False)
    assert not any(p.requires_grad for p in dec.image_feature_neck.parameters())
    assert not dec.no_mask_embed.weight.requires_grad
    assert dec.text_hidden_fcs[0].weight.requires_grad
