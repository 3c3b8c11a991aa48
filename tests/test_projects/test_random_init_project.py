"""projects/pixellm_7b_random_init: its config is the PixelLM-7B recipe pointed at random weights,
and the folders make_random_weights.py writes load through the recipe's own loaders."""
import importlib.util
import os
import os.path as osp

import pytest
import torch

from pixellm.utils import load_config

from conftest import REPO, TINY_MODEL_CFG

PROJECT = osp.join(REPO, 'projects', 'pixellm_7b_random_init')
CONFIG = osp.join(PROJECT, 'configs', 'pixellm_7b_lora_random_muse.py')
RECIPE = osp.join(REPO, 'configs', 'pixellm', 'pixellm_7b_lora_8xb2_ga10_5k_mix.py')


def _text_processor_cfgs(cfg):
    loaders = (cfg.train_dataloader, cfg.test_dataloader)
    return [step['text_processor'] for loader in loaders for step in loader['dataset']['pipeline']
            if 'text_processor' in step]


def test_config_is_the_recipe_on_the_random_folders():
    cfg, recipe = load_config(CONFIG), load_config(RECIPE)
    model, base = cfg.model.to_dict(), recipe.model.to_dict()
    assert model['llm'].pop('pretrained') == 'work_dirs/random_7b/llava'
    assert model['vision_encoder'].pop('pretrained') == 'work_dirs/random_7b/clip'
    assert model['text_processor']['tokenizer'].pop('name_or_path') == \
        'work_dirs/random_7b/llava'
    assert model.pop('max_new_tokens') == 64
    assert base['llm'].pop('pretrained') == 'LLaVA-Lightning-7B-v1-1'
    assert base['vision_encoder'].pop('pretrained') == 'openai/clip-vit-large-patch14-336'
    assert base['text_processor']['tokenizer'].pop('name_or_path') == \
        'LLaVA-Lightning-7B-v1-1'
    assert base.pop('max_new_tokens') == 512
    # Everything else is the recipe's: architecture, dtypes, LoRA, trainable set, losses.
    assert model == base
    processors = _text_processor_cfgs(cfg)
    assert len(processors) == 4 and all(t == cfg.model.text_processor for t in processors)
    wrapper = cfg.optim_wrapper.to_dict()
    assert wrapper.pop('accumulative_counts') == 1
    assert recipe.optim_wrapper.to_dict() | {'accumulative_counts': 1} == \
        wrapper | {'accumulative_counts': 1}
    assert wrapper['type'] == 'AmpOptimWrapper' and wrapper['dtype'] == 'bfloat16'
    assert cfg.train_cfg.max_iters == 20
    assert cfg.default_hooks.checkpoint.save_optimizer is False


@pytest.fixture(scope='module')
def make_weights():
    spec = importlib.util.spec_from_file_location(
        'make_random_weights', osp.join(PROJECT, 'make_random_weights.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_written_folders_load_as_the_config_loads_checkpoints(make_weights, tmp_path):
    from pixellm.models.llms import HFCausalLM
    from pixellm.text.tokenizers import build_tokenizer
    from pixellm.models.vision_encoders import CLIPVisionEncoder
    out = tmp_path / 'random'
    # A vocabulary larger than the shipped tokenizer's 1024 ids: the rest are filler tokens.
    make_weights.main([TINY_MODEL_CFG, '--out', str(out), '--cfg-options',
                       'model.llm.llm_config.vocab_size=1100'])
    cfg = load_config(TINY_MODEL_CFG).model
    llm = HFCausalLM(pretrained=str(out / 'llava'), llm_config=dict(model_type='llama'))
    assert llm.vocab_size == 1100
    assert llm.hf_model.config.num_hidden_layers == cfg.llm.llm_config.num_hidden_layers
    tokenizer = build_tokenizer(dict(type='PretrainedTokenizer', name_or_path=str(out / 'llava')))
    tiny = build_tokenizer(dict(type='TinyTokenizer'))
    assert len(tokenizer) == 1100
    assert tokenizer.convert_ids_to_tokens([1024, 1099]) == ['<filler_0>', '<filler_75>']
    text = 'A chat between a curious human and an artificial intelligence assistant.'
    assert tokenizer(text).input_ids == tiny(text).input_ids
    encoder = CLIPVisionEncoder(pretrained=str(out / 'clip'),
                                vision_config=dict(cfg.vision_encoder.vision_config),
                                select_layers=cfg.vision_encoder.select_layers)
    assert encoder.vision_model.embeddings.patch_embedding.weight.dtype == torch.float32
    # Nothing already written is replaced.
    before = {p: os.stat(out / 'llava' / p).st_mtime_ns for p in os.listdir(out / 'llava')}
    with pytest.raises(SystemExit, match='is not empty'):
        make_weights.main([TINY_MODEL_CFG, '--out', str(out)])
    assert {p: os.stat(out / 'llava' / p).st_mtime_ns for p in os.listdir(out / 'llava')} == before
