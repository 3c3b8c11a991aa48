"""pixellm.engine.fsdp: the FSDP units are the block classes the model's components declare, read
from the config without building the model; a new component brings its own."""
import os.path as osp
from functools import partial

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import FUNCTIONS

from pixellm.engine import install_mmengine_fixes
from pixellm.engine.fsdp import FSDP_WRAP_POLICY, apply_fsdp, declared_block_classes
from pixellm.models.llms import HFCausalLM
from pixellm.models.vision_encoders import CLIPVisionEncoder
from pixellm.registry import MODELS
from pixellm.utils import load_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RECIPE_7B = osp.join(REPO, 'configs', 'pixellm', 'pixellm_7b_lora_8xb2_ga10_5k_mix.py')


def _fsdp_cfg(model):
    return Config(dict(launcher='pytorch', model=model))


def _layer_classes(cfg):
    return cfg.strategy.model_wrapper.auto_wrap_policy.layer_classes


def _built_policy(cfg):
    """The policy callable as mmengine's FSDP wrapper builds it from the config."""
    install_mmengine_fixes()
    policy = dict(cfg.strategy.model_wrapper.auto_wrap_policy)
    return partial(FUNCTIONS.get(policy.pop('type')), **policy)


def test_7b_recipe_wraps_llama_and_clip_blocks(monkeypatch):
    cfg = load_config(RECIPE_7B, import_plugins=False)
    cfg.launcher = 'pytorch'

    def no_build(*args, **kwargs):
        raise AssertionError('apply_fsdp built a component')

    # The blocks come from the classes, not from a model (7B weights are not loaded here).
    monkeypatch.setattr(CLIPVisionEncoder, '__init__', no_build)
    monkeypatch.setattr(HFCausalLM, '__init__', no_build)
    notes = apply_fsdp(cfg)
    assert _layer_classes(cfg) == ['CLIPEncoderLayer', 'LlamaDecoderLayer']
    assert cfg.strategy.model_wrapper.auto_wrap_policy.type == FSDP_WRAP_POLICY
    assert 'one unit per CLIPEncoderLayer/LlamaDecoderLayer' in notes[0]
    assert notes[0].endswith('blocks declared by CLIPVisionEncoder (model.vision_encoder), '
                             'HFCausalLM (model.llm)')


@pytest.mark.parametrize('model_type,block', [('llama', 'LlamaDecoderLayer'),
                                              ('mistral', 'MistralDecoderLayer'),
                                              ('qwen2', 'Qwen2DecoderLayer')])
def test_the_llm_declares_the_decoder_layer_of_its_architecture(model_type, block):
    llm = dict(type='HFCausalLM', llm_config=dict(model_type=model_type))
    assert declared_block_classes(dict(type='PixelLM', llm=llm)) == [
        ('model.llm', 'HFCausalLM', (block, ))]


@pytest.fixture
def plugin_components():
    """A vision encoder declaring a block class pixellm has never heard of, an LLM wrapper that
    overrides the declaration, an encoder that declares none and a pixel decoder with blocks;
    registered as a plugin would register them, and removed afterwards."""

    class PatchMixerEncoder(CLIPVisionEncoder):

        @classmethod
        def fsdp_block_classes(cls, cfg):
            return ('PatchMixerBlock', )

    class GatedLLM(HFCausalLM):

        @classmethod
        def fsdp_block_classes(cls, cfg):
            return (f'Gated{cfg["depth"]}Layer', 'LlamaDecoderLayer')

    class PlainEncoder(torch.nn.Module):
        pass

    class MixerDecoder(torch.nn.Module):

        @classmethod
        def fsdp_block_classes(cls, cfg):
            return ('PatchMixerBlock', 'DecoderBlock')

    names = ['TestFSDPPatchMixerEncoder', 'TestFSDPGatedLLM', 'TestFSDPPlainEncoder',
             'TestFSDPMixerDecoder']
    for name, cls in zip(names, (PatchMixerEncoder, GatedLLM, PlainEncoder, MixerDecoder)):
        MODELS.register_module(name=name, module=cls, force=True)
    yield names
    for name in names:
        MODELS.module_dict.pop(name)


def test_a_plugin_component_brings_its_blocks_into_the_policy(plugin_components):
    mixer, gated, _, decoder = plugin_components
    cfg = _fsdp_cfg(dict(type='PixelLM', vision_encoder=dict(type=mixer),
                         llm=dict(type=gated, depth=3), projector=dict(type='MLPProjector'),
                         pixel_decoder=dict(type=decoder)))
    apply_fsdp(cfg)
    # Every component of the model counts; each class once, in config order.
    assert _layer_classes(cfg) == ['PatchMixerBlock', 'Gated3Layer', 'LlamaDecoderLayer',
                                   'DecoderBlock']

    class PatchMixerBlock(torch.nn.Linear):
        pass

    policy = _built_policy(cfg)
    assert policy(module=PatchMixerBlock(2, 2), recurse=False, nonwrapped_numel=0)
    assert not policy(module=torch.nn.Linear(2, 2), recurse=False, nonwrapped_numel=0)


def test_a_component_that_declares_nothing_contributes_nothing(plugin_components):
    plain = plugin_components[2]
    cfg = _fsdp_cfg(dict(type='PixelLM', vision_encoder=dict(type=plain),
                         llm=dict(type='HFCausalLM', llm_config=dict(model_type='qwen2'))))
    apply_fsdp(cfg)
    assert _layer_classes(cfg) == ['Qwen2DecoderLayer']


def test_a_model_without_declared_blocks_is_refused(plugin_components):
    plain = plugin_components[2]
    cfg = _fsdp_cfg(dict(type='PixelLM', vision_encoder=dict(type=plain),
                         pixel_decoder=dict(type='PixelDecoder')))
    with pytest.raises(ValueError) as err:
        apply_fsdp(cfg)
    message = str(err.value)
    assert 'no component of the model declares' in message
    assert 'TestFSDPPlainEncoder (model.vision_encoder)' in message
    assert 'fsdp_block_classes' in message
    assert 'strategy' not in cfg and 'runner_type' not in cfg


def test_declared_blocks_are_classes_of_the_built_components():
    tiny = load_config(osp.join(REPO, 'configs', '_base_', 'models', 'pixellm_tiny.py'),
                       import_plugins=False).model
    for key in ('llm', 'vision_encoder'):
        [(_, _, blocks)] = declared_block_classes(tiny[key], key)
        built = MODELS.build(tiny[key])
        names = {type(module).__name__ for module in built.modules()}
        assert blocks and set(blocks) <= names, (key, blocks)
