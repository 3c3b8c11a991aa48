"""PromptNormPixelDecoder: PixelLM's decoder with codebook states standardised over the batch."""
import pytest
import torch

from projects.pixellm_tiny_demo.pixellm_tiny_demo import PromptNormPixelDecoder


def _official_prompts(dec, states):
    x = dec.text_hidden_fcs(states) * dec.prompt_scale
    return torch.einsum('nstc,t->nsc', x, dec.token_fusion)


def test_state_norm_standardises_each_codebook_slot_over_the_targets():
    torch.manual_seed(0)
    dec = PromptNormPixelDecoder(in_channels=16, feat_channels=24, grid_size=4, input_size=56,
                                 embed_dim=32, num_heads=4, mlp_dim=64, state_norm='batch',
                                 prompt_scale=8.0)
    # A large shared part plus a small per-target part, as a random-init LLM gives.
    shared = torch.randn(1, 2, 3, 16) * 10
    states = shared + 0.1 * torch.randn(5, 2, 3, 16)
    dec.train()
    got = dec.embed_targets(states)
    mean = states.mean(0, keepdim=True)
    var = states.var(0, unbiased=False, keepdim=True)
    standard = (states - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(got, _official_prompts(dec, standard), rtol=1e-4, atol=1e-4)
    # The running statistics moved towards the batch's and are used at test time, also by a
    # lone target in training (batch statistics need two).
    assert int(dec.state_norm.num_batches_tracked) == 1
    running = (states - dec.state_norm.running_mean.view(1, 2, 3, 16)) / torch.sqrt(
        dec.state_norm.running_var.view(1, 2, 3, 16) + 1e-5)
    dec.eval()
    torch.testing.assert_close(dec.embed_targets(states), _official_prompts(dec, running),
                               rtol=1e-4, atol=1e-4)
    dec.train()
    torch.testing.assert_close(dec.embed_targets(states[:1]),
                               _official_prompts(dec, running[:1]), rtol=1e-4, atol=1e-4)
    assert int(dec.state_norm.num_batches_tracked) == 1


def test_only_batch_standardisation_is_offered():
    with pytest.raises(ValueError, match="state_norm must be 'batch'"):
        PromptNormPixelDecoder(in_channels=16, feat_channels=24, grid_size=4, input_size=56,
                               state_norm='layer')
