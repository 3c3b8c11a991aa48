"""The PixelLM-7B recipe at full width on the CPU: one bf16 training step and one generation.

The recipe as it is (CLIP ViT-L/14 at 448, LLaMA-7B widths and vocabulary, LoRA, the real pixel
decoder, the official trainable set) with 2 LLM layers instead of 32, random weights, built and
run through tools/analysis/benchmark.py's code: its random-init builder, the recipe's optimizer
wrapper (on the CPU mmengine's ``AmpOptimWrapper`` becomes an ``OptimWrapper`` with the same
AdamW and clipping under bf16 autocast) and its steered generation. About 11 GB of memory and
70 s on 2 cores, so ``make test`` leaves it out (marker ``full_width``) and
``make test-full-width`` (run by CI) runs it.
"""
import copy
import os.path as osp

import pytest
import torch
from pixellm.utils.config import load_config

from conftest import REPO, load_tool

RECIPE = osp.join(REPO, 'configs', 'pixellm', 'pixellm_7b_lora_8xb2_ga10_5k_mix.py')

pytestmark = pytest.mark.full_width


def test_7b_recipe_trains_a_bf16_step_and_generates_a_target_with_its_mask():
    bench = load_tool('analysis/benchmark')
    from pixellm.models.meta_build import build_random_init
    cfg = load_config(RECIPE)
    cfg.merge_from_dict({'model.llm.llm_config.num_hidden_layers': 2})
    model = build_random_init(cfg.model)
    llm = model.llm.hf_model
    assert llm.config.hidden_size == 4096 and model.vision_encoder.image_size == 448
    assert model.llm.vocab_size == 32008 and len(llm.model.layers) == 2
    assert llm.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16

    wrapper = bench.build_optim_wrapper(model, cfg, 'cpu')
    assert type(wrapper.optimizer).__name__ == 'AdamW'
    assert wrapper.optimizer.defaults['lr'] == cfg.optim_wrapper.optimizer.lr
    assert wrapper.clip_grad_kwargs == dict(cfg.optim_wrapper.clip_grad)
    watched = {name: p.detach().clone() for name, p in model.named_parameters()
               if p.requires_grad and any(k in name for k in (
                   'lora_B', 'embed_tokens', 'lm_head', 'new_embed', 'text_hidden_fcs',
                   'mask_projector.layers.0.weight', 'transformers.0.layers.0.mlp.0.weight'))}
    assert len(watched) >= 8
    images, samples = bench.synthetic_batch(model, batch=2, seq_len=512, targets=3)
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        log_vars = model.train_step(dict(inputs=images, data_samples=samples), wrapper)
    for key in ('loss_ce', 'loss_mask_bce', 'loss_mask_dice'):
        assert torch.isfinite(log_vars[key]), key
    # A random LLaMA over 32008 ids starts near ln(32008) = 10.4.
    assert 8.0 < float(log_vars['loss_ce'].detach()) < 14.0
    moved = [name for name, p in model.named_parameters()
             if name in watched and not torch.equal(p.detach(), watched[name])]
    assert sorted(moved) == sorted(watched)
    frozen = dict(model.named_parameters())['pixel_decoder.no_mask_embed.weight']
    assert not frozen.requires_grad and frozen.grad is None

    model.eval()
    model.max_new_tokens = 12
    forced = bench.forced_answer_ids(model, targets=1, new_tokens=12)
    steer = bench.GenerationSteer(model, forced)
    try:
        images, samples = bench.synthetic_batch(model, batch=1, seq_len=512, targets=1)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            out = model.test_step(dict(inputs=images, data_samples=copy.deepcopy(samples)))
    finally:
        steer.remove()
    pred = out[0]
    # The answer names the forced target (its codebook tokens are in the text) and has its mask.
    assert model.codebook.target_text in pred.metainfo['pred_text']
    masks = pred.pred_instances.masks
    assert masks.shape[0] == 1
    assert tuple(masks.shape[-2:]) == tuple(samples[0].metainfo['ori_shape'])
    assert masks.dtype == torch.bool
