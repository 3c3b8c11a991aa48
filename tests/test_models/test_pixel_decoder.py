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
    # The official constant: 1 / (all codebook tokens), here 2 scales x 3 tokens.
    torch.testing.assert_close(dec.token_fusion.data, torch.full((3,), 1 / 6))
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


def _official_prompts(dec, states):
    x = dec.text_hidden_fcs(states)
    return torch.einsum('nstc,t->nsc', x, dec.token_fusion)


def test_default_decoder_is_the_official_one():
    dec = make()
    states = torch.randn(4, 2, 3, 16)
    torch.testing.assert_close(dec.embed_targets(states), _official_prompts(dec, states))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in dec.modules())


def test_backward_is_bit_reproducible_with_many_targets_per_image():
    # 128 targets share the one image's features, so its feature gradient sums 128 contributions.
    # With advanced indexing (necked[owner, level]) a CPU backward added them with atomic adds
    # from several threads, in an order that changed from one pass to the next.
    dec = make()
    states = torch.randn(128, 2, 3, 16)
    feats = [torch.randn(1, 16, 24) for _ in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        grads = []
        for _ in range(5):
            inputs = [f.clone().requires_grad_() for f in feats]
            dec.zero_grad()
            dec([states], inputs)[0].square().sum().backward()
            grads.append([f.grad for f in inputs] + [p.grad.clone() for p in dec.parameters()
                                                     if p.grad is not None])
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


def test_base_decoder_states_the_interface_and_a_plugin_uses_every_weight():
    import importlib

    import pytest

    from pixellm.models.pixel_decoders import BasePixelDecoder
    with pytest.raises(TypeError, match='abstract'):
        BasePixelDecoder(in_channels=8, feat_channels=8, grid_size=4, input_size=16)
    plugin = importlib.import_module('plugins.dot_product_decoder')
    dec = plugin.DotProductPixelDecoder(in_channels=12, feat_channels=10, grid_size=4,
                                        input_size=16, num_scales=2, tokens_per_scale=3,
                                        embed_dim=8)
    assert isinstance(dec, BasePixelDecoder)
    states = [torch.randn(2, 2, 3, 12), torch.randn(0, 2, 3, 12), torch.randn(1, 2, 3, 12)]
    feats = [torch.randn(3, 16, 10), torch.randn(3, 16, 10)]
    low = dec(states, feats)
    assert [tuple(m.shape) for m in low] == [(2, 16, 16), (0, 16, 16), (1, 16, 16)]
    out = [dec.postprocess(m, (16, 12), (20, 15)) for m in low]
    sum(o.sum() for o in out).backward()
    # A third-party decoder built on the base class carries no weight it never uses.
    unused = [name for name, p in dec.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    with pytest.raises(ValueError, match='codebook has 1 scale'):
        dec.check_codebook(1, 3)
