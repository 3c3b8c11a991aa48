"""PixelLM-7B/13B built on the meta device have the official architecture's parameter count.

The expected numbers are computed here from the official module shapes (LLaMA, CLIP ViT-L/14
resized to 448, ``mm_projector``/``out_mm_projector`` with hidden 2H, ``text_hidden_fcs``, the
lightweight decoder), independently of the toolbox's code. So is the trainable count: what the
official ``train_ds.py`` trains (LoRA, the whole ``embed_tokens`` and ``lm_head``, ``mask_decoder``,
``text_hidden_fcs``, both projectors) less the mask heads no loss reaches.
"""
import os.path as osp

import pytest
from conftest import REPO

from pixellm.utils.config import load_config
from pixellm.models.meta_build import build_on_meta, count_parameters


def linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def llama(vocab, h, inter, layers):
    per_layer = 4 * linear(h, h, False) + 3 * linear(h, inter, False) + 2 * h
    return 2 * vocab * h + layers * per_layer + h


def clip_vit_l14(grid):
    d = 1024
    emb = d + 3 * 14 * 14 * d + (grid * grid + 1) * d
    layer = 4 * linear(d, d) + linear(d, 4096) + linear(4096, d) + 4 * d
    return emb + 2 * d + 24 * layer + 2 * d


def two_way_transformer(d=256, mlp=2048):
    self_attn = 4 * linear(d, d)
    cross = 3 * linear(d, d // 2) + linear(d // 2, d)
    block = self_attn + cross + linear(d, mlp) + linear(mlp, d) + cross + 4 * 2 * d
    return 2 * block + cross + 2 * d


def official_pixellm(vocab, h, inter, layers, scales=2):
    d = 256
    llm = llama(vocab, h, inter, layers)
    projectors = 2 * (linear(1024, 2 * h) + linear(2 * h, h))
    text_fcs = linear(h, h) + linear(h, d)
    # SAM PromptEncoder as the official code builds it: point/mask paths included, though unused.
    prompt_unused = 4 * d + d + (4 * 4 + 4) + 8 + (4 * 16 * 4 + 16) + 32 + linear(16, d)
    prompt_used = d  # no_mask_embed
    neck = h * d + 2 * d + d * d * 9 + 2 * d
    decoder = (scales * two_way_transformer() + d + 4 * d
               + (d * 32 * 4 + 32) + 64 + (d * d * 4 + d) + 2 * d
               + 4 * (2 * linear(d, d) + linear(d, 32))
               + 2 * linear(d, d) + linear(d, 4) + scales * d)
    total = (llm + clip_vit_l14(32) + projectors + text_fcs + prompt_unused + prompt_used
             + neck + decoder)
    # train_ds.py unfreezes every name with lm_head, embed_tokens, mask_decoder, text_hidden_fcs or
    # mm_projector: the two token tables whole (added rows included), the decoder above, both
    # projectors and the text MLP; not the neck, the prompt encoder or CLIP. SAM's mask heads 2-4
    # and IoU head are in the decoder but no loss reaches them (PixelLM reads the first mask
    # token); they are left out of the trained count.
    unreached = 3 * (2 * linear(d, d) + linear(d, 32)) + 2 * linear(d, d) + linear(d, 4)
    trained = 2 * vocab * h + decoder - unreached + projectors + text_fcs
    return total, prompt_unused, trained


@pytest.mark.parametrize('config,shape', [
    ('pixellm_7b.py', (4096, 11008, 32)),
    ('pixellm_13b.py', (5120, 13824, 40)),
])
def test_meta_parameter_count_matches_official_architecture(config, shape):
    cfg = load_config(osp.join(REPO, 'configs', '_base_', 'models', config))
    model = build_on_meta(cfg.model)
    total, trainable = count_parameters(model)
    h, inter, layers = shape
    # LLaVA v1 vocabulary (32000) + 6 codebook tokens + <im_start>, <im_end>.
    vocab = 32000 + 8
    assert model.llm.vocab_size == vocab
    official, prompt_unused, official_trained = official_pixellm(vocab, h, inter, layers)
    lora = layers * 2 * (8 * h + h * 8)
    fusion = 3 + 2  # token/scale fusion weights: parameters here, plain lists officially
    assert total == official - prompt_unused + lora + fusion
    if config == 'pixellm_7b.py':
        # LLaMA-7B's well-known 6.74B plus the vision side, projectors and decoder.
        assert abs(total / 1e9 - 7.158) < 0.001
    assert model.codebook.token_ids == list(range(32000, 32006))
    # Trained as the official run trains (LoRA on top); the fusion weights are constants there.
    assert trainable == official_trained + lora
