"""PixelLM's auxiliary heads: built from configs with derived widths, called with the documented
teacher-forced outputs, their losses added by name."""
import pytest
import torch
from conftest import build_tiny, make_batch
from torch import nn

from pixellm.models import BaseAuxHead
from pixellm.registry import MODELS


@MODELS.register_module(force=True)
class _RecordingHead(BaseAuxHead):
    """Scores the mean codebook state with its own weight and remembers what it was given."""

    def __init__(self, in_channels, loss_weight=1.0, loss_name='loss_recording'):
        super().__init__()
        self.scale = nn.Linear(in_channels, 1)
        self.loss_weight = loss_weight
        self.loss_name = loss_name
        self.seen = None

    def loss(self, outputs, data_samples):
        self.seen = (outputs, data_samples)
        states = torch.cat([s.flatten(0, 2) for s in outputs['codebook_states']])
        return {self.loss_name: self.loss_weight * self.scale(states).pow(2).mean()}


@MODELS.register_module(force=True)
class _VocabHead(_RecordingHead):
    def __init__(self, in_channels, vocab_size):
        super().__init__(in_channels)
        self.vocab_size = vocab_size


@MODELS.register_module(force=True)
class _NotAHead(nn.Module):
    def __init__(self, in_channels):
        super().__init__()


def test_heads_get_the_widths_they_take_and_add_named_losses():
    model = build_tiny(aux_heads=[dict(type='_RecordingHead', loss_weight=0.5),
                                  dict(type='_VocabHead')])
    first, second = model.aux_heads
    assert first.scale.in_features == model.llm.hidden_size
    assert second.vocab_size == len(model.tokenizer)
    # The second head has no loss_name argument in its config: its default collides.
    data = make_batch(model)
    with pytest.raises(ValueError, match="'loss_recording', a loss name already in use"):
        model(**data, mode='loss')


def test_a_head_sees_the_documented_outputs_and_its_loss_trains_its_weights():
    model = build_tiny(aux_heads=[dict(type='_RecordingHead')])
    data = make_batch(model)  # 2, 0 and 1 targets
    losses = model(**data, mode='loss')
    assert {'loss_ce', 'loss_mask_bce', 'loss_mask_dice', 'loss_recording'} <= set(losses)
    outputs, samples = model.aux_heads[0].seen
    assert samples is data['data_samples']
    assert [len(m) for m in outputs['gt_masks']] == [2, 0, 1]
    assert [tuple(p.shape) for p in outputs['codebook_positions']] == [
        (n, model.codebook.num_scales * model.codebook.tokens_per_scale) for n in (2, 0, 1)]
    assert outputs['hidden'].shape[:2] == outputs['input_ids'].shape
    assert outputs['input_size'] == data['inputs'].shape[-1]
    assert outputs['llm_image_grid'] == model.llm_image_grid
    assert len(outputs['valid_hw']) == 3
    assert set(outputs['non_text_ids'].tolist()) == set(model.codebook.token_ids) | {
        model.pad_token_id}
    model.zero_grad()
    losses['loss_recording'].backward()
    assert model.aux_heads[0].scale.weight.grad.abs().sum() > 0


def test_heads_change_nothing_else_and_are_not_run_at_inference():
    plain = build_tiny()
    model = build_tiny(aux_heads=[dict(type='_RecordingHead')])
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith('aux_heads.0.') for k in missing)
    with torch.no_grad():
        want = plain(**make_batch(plain), mode='loss')
        got = model(**make_batch(model), mode='loss')
    assert set(got) == set(want) | {'loss_recording'}
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    model.aux_heads[0].seen = None
    model.eval()
    with torch.no_grad():
        model.predict(**make_batch(model, targets=(1,)), max_new_tokens=2)
    assert model.aux_heads[0].seen is None


def test_a_component_that_is_not_a_head_or_not_registered_is_refused():
    with pytest.raises(TypeError, match='_NotAHead is not a BaseAuxHead'):
        build_tiny(aux_heads=[dict(type='_NotAHead')])
    with pytest.raises(KeyError, match="'NoSuchHead' is not a registered"):
        build_tiny(aux_heads=[dict(type='NoSuchHead')])


@MODELS.register_module(force=True)
class _ForwardingHead(_RecordingHead):
    """A subclass that passes its arguments on: it gets what its parent names."""

    def __init__(self, *args, extra=1, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = extra


def test_a_subclass_passing_kwargs_on_gets_only_what_its_bases_name():
    model = build_tiny(aux_heads=[dict(type='_ForwardingHead', extra=3)])
    head = model.aux_heads[0]
    assert head.scale.in_features == model.llm.hidden_size and head.extra == 3
    with pytest.raises(ValueError, match='a config dict with a type'):
        build_tiny(aux_heads=[dict(window=4)])
