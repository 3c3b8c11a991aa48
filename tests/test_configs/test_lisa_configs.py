"""The LISA recipes: every config loads, the 7B/13B models build on the meta device as LISA, and a
released LISA checkpoint's layout fills the 7B/13B model exactly."""
import os.path as osp
import sys

import pytest
import torch
from conftest import REPO

from pixellm.models.converters import clip_vision_weights, convert_official_lisa
from pixellm.models.meta_build import build_on_meta, offline_model_cfg
from pixellm.utils.config import load_config

sys.path.insert(0, osp.join(REPO, 'tests', 'test_models'))
from lisa_fixtures import ADDED, CLIP_VIT_L14, lisa_shapes  # noqa: E402

CONFIGS = osp.join(REPO, 'configs', 'lisa')
EVALS = [f'lisa_{size}_eval_{bench}.py' for size in ('7b', '13b')
         for bench in ('reasonseg', 'refcoco', 'grefcoco', 'muse')]
RECIPES = {'7b': 'lisa_7b_lora_8xb2_ga10_5k_mix.py', '13b': 'lisa_13b_lora_8xb2_ga10_5k_mix.py'}
SHAPES = {'7b': (4096, 11008, 32), '13b': (5120, 13824, 40)}


@pytest.mark.parametrize('name', sorted(RECIPES.values()) + EVALS)
def test_every_lisa_config_loads_with_lisa_s_model_and_text(name):
    cfg = load_config(osp.join(CONFIGS, name))
    assert cfg.model.type == 'LISA'
    assert cfg.model.text_processor['codebook']['token_format'] == '[SEG]'
    steps = [s for s in cfg.test_dataloader.dataset.pipeline if s['type'] == 'ResizeLongestSide']
    assert [s['size'] for s in steps] == [1024]


def test_the_recipe_is_lisa_s_train_ds_defaults():
    cfg = load_config(osp.join(CONFIGS, RECIPES['7b']))
    mix = cfg.train_dataloader.dataset
    assert list(mix.groups) == ['sem_seg', 'refer_seg', 'vqa', 'reason_seg']
    assert tuple(mix.sample_rates) == (9, 3, 3, 1)
    reason = mix.groups['reason_seg'][0]
    assert reason['split'] == 'train'
    assert [s.get('explanatory') for s in reason['pipeline']
            if s['type'] == 'ChooseExplanatoryAnswer'] == [0.1]
    assert cfg.optim_wrapper.optimizer.lr == 3e-4
    assert cfg.optim_wrapper.accumulative_counts == 10
    assert cfg.train_dataloader.batch_size == 2
    assert cfg.train_cfg.max_iters == 10 * 500 * 10
    assert cfg.model.llm.lora == dict(r=8, alpha=16, dropout=0.05,
                                      target_modules=['q_proj', 'v_proj'])
    losses = (cfg.model.loss_lm.loss_weight, cfg.model.loss_mask.loss_weight,
              cfg.model.loss_dice.loss_weight)
    assert losses == (1.0, 2.0, 0.5)
    assert cfg.text_processor['tokenizer']['model_max_length'] == 512
    assert cfg.text_processor['chat_template'] == 'vicuna_v1'
    assert cfg.text_processor['use_im_start_end'] is True


@pytest.mark.parametrize('size', ['7b', '13b'])
def test_the_recipe_builds_on_meta_and_a_released_checkpoint_fills_it(size):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = load_config(osp.join(CONFIGS, RECIPES[size]))
    offline = offline_model_cfg(cfg.model)
    assert all(offline[k].get('pretrained') is None
               for k in ('vision_encoder', 'mask_encoder', 'llm', 'pixel_decoder'))
    model = build_on_meta(cfg.model)
    assert type(model).__name__ == 'LISA'
    assert model.llm.vocab_size == 32000 + ADDED
    assert model.data_preprocessor.size == 1024
    assert model.pixel_decoder.feat_channels == 256 and model.pixel_decoder.grid_size == 64
    assert model.llm_image_grid == 16
    with torch.device('meta'):
        clip = clip_vision_weights(CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_L14)).state_dict())
    h, inter, layers = SHAPES[size]
    sam = dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31),
               window_size=14)
    official = {k: torch.empty(s, device='meta')
                for k, s in lisa_shapes(32000 + ADDED, h, inter, layers, sam).items()}
    target = model.state_dict()
    result = convert_official_lisa(official, target, clip=clip)
    assert result.state_dict.keys() == target.keys()
    assert all(result.state_dict[k].shape == target[k].shape for k in target)
    # Nothing missing: only the LoRA adapters (merged into the released weights) are filled.
    assert result.filled and all('lora_' in k for k in result.filled)
    assert sorted(result.dropped) == sorted(k for k in official if k.endswith('.inv_freq'))


def test_readme_flag_tables_match_the_recipes():
    import ast

    from test_recipes import _same, readme_tables, resolve
    tables = readme_tables(open(osp.join(CONFIGS, 'README.md')).read())
    found = {}
    for heading, rows in tables.items():
        for name in RECIPES.values():
            if f'`{name}`' in heading:
                assert rows[0][:4] == ['official flag', 'official value', 'config key',
                                       'value here']
                found[name] = rows[1:]
    assert set(found) == set(RECIPES.values())
    for size, name in RECIPES.items():
        cfg = load_config(osp.join(CONFIGS, name))
        rows = found[name]
        own = {(row[0], row[2]) for row in rows}
        rows += [row for row in found[RECIPES['7b']] if (row[0], row[2]) not in own]
        checked = 0
        for flag, _, key, value, notes in rows:
            if key == '—':
                assert value == '—' and notes, flag
                continue
            key, value = key.strip('`'), ast.literal_eval(value.strip('`'))
            values = resolve(cfg, key)
            assert values, f'{flag}: {key} selects nothing in {name}'
            wildcard = '*' in key or '[type=' in key
            assert (wildcard and _same(values, value)) or all(_same(v, value) for v in values), \
                f'{flag}: {key} is {values} in {name}, the README says {value!r}'
            checked += 1
        assert checked >= 40
