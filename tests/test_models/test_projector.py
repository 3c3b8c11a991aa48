"""MLP projector: official shapes (hidden 2H), single-linear variant, width checks."""
import pytest
import torch

from pixellm.models.projectors import MLPProjector


def test_official_two_layer_shape_and_output():
    proj = MLPProjector(in_channels=8, out_channels=6)
    first, act, second = proj.layers
    assert (first.in_features, first.out_features) == (8, 12)  # hidden = 2 * out (official)
    assert (second.in_features, second.out_features) == (12, 6)
    x = torch.randn(2, 5, 8)
    expected = second(torch.nn.functional.gelu(first(x)))
    torch.testing.assert_close(proj(x), expected)


def test_single_linear_and_explicit_hidden():
    assert len(MLPProjector(8, 6, num_layers=1).layers) == 1
    assert MLPProjector(8, 6, hidden_channels=7).layers[0].out_features == 7
    with pytest.raises(ValueError, match='num_layers'):
        MLPProjector(8, 6, num_layers=3)


def test_wrong_input_width_is_reported():
    with pytest.raises(ValueError, match='expects 8 input channels, got 5'):
        MLPProjector(8, 6)(torch.randn(1, 5))
