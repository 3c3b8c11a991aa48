"""tools/model_converters/export_hf.py and pixellm.models.export: the tiny PixelLM with trained LoRA
exported, loaded back (by pixellm and by transformers alone), and predicting the same."""
import json
import os
import os.path as osp
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY_MODEL_CFG, build_tiny, load_tool, make_batch, tiny_model_cfg

DEMO_CFG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')
LORA_SCALE = 16 / 8  # alpha / r of the tiny config


@pytest.fixture(scope='module')
def tool():
    return load_tool('model_converters/export_hf')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """The tiny model with non-zero LoRA and added rows unlike their init, and its checkpoint."""
    model = build_tiny(seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'lora_B' in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
        for param in (model.llm.new_embed, model.llm.new_head):
            param.add_(torch.randn(param.shape, generator=g) * 0.05)
    model.eval()
    ckpt = tmp_path_factory.mktemp('train') / 'iter_1.pth'
    torch.save(dict(meta=dict(iter=1, epoch=0), state_dict=model.state_dict()), ckpt)
    return model, str(ckpt)


@pytest.fixture(scope='module')
def exported(tool, trained, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('export') / 'pixellm_hf')
    tool.main([TINY_MODEL_CFG, trained[1], out])
    return out


@pytest.fixture(scope='module')
def reloaded(exported):
    from pixellm.models import load_exported
    return load_exported(exported)


def test_folder_layout_and_merged_lora(trained, exported):
    model, ckpt = trained
    names = {osp.relpath(osp.join(d, f), exported) for d, _, fs in os.walk(exported) for f in fs}
    assert {'pixellm_config.json', 'pixellm.safetensors', 'llm/config.json',
            'llm/model.safetensors', 'llm/tokenizer.json'} <= names
    info = json.load(open(osp.join(exported, 'pixellm_config.json')))
    assert info['llm_base_vocab_size'] == 1024 and info['vocab_size'] == len(model.tokenizer)
    assert info['codebook_token_ids'] == model.codebook.token_ids
    assert info['model']['llm']['pretrained'] == 'llm'  # relative: the folder can move
    assert info['source']['checkpoint'] == osp.abspath(ckpt) and info['source']['iter'] == 1
    parts = load_file(osp.join(exported, 'pixellm.safetensors'))
    assert not any(k.startswith('llm.') for k in parts)
    assert torch.equal(parts['pixel_decoder.mask_tokens.weight'],
                       model.pixel_decoder.mask_tokens.weight)

    llm = load_file(osp.join(exported, 'llm', 'model.safetensors'))
    assert not any('lora' in k or 'base_layer' in k for k in llm)
    assert llm['model.embed_tokens.weight'].shape == (len(model.tokenizer), 128)
    state = torch.load(ckpt, weights_only=True)['state_dict']
    prefix = 'llm.model.base_model.model.model.layers.0.self_attn.q_proj.'
    base = state[prefix + 'base_layer.weight']
    delta = LORA_SCALE * state[prefix + 'lora_B.default.weight'] @ \
        state[prefix + 'lora_A.default.weight']
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(llm['model.layers.0.self_attn.q_proj.weight'], base + delta)
    torch.testing.assert_close(llm['lm_head.weight'][1024:], state['llm.new_head'])


def test_reloaded_model_predicts_the_same(trained, reloaded):
    model = trained[0]
    assert reloaded.llm.lora_cfg is None and reloaded.llm.base_vocab_size == 1024
    text = 'A [SEG0][SEG1][SEG2][SEG3][SEG4][SEG5] here.</s>'
    assert reloaded.tokenizer(text).input_ids == model.tokenizer(text).input_ids
    with torch.no_grad():
        want = model(**make_batch(model), mode='tensor')
        got = reloaded(**make_batch(reloaded), mode='tensor')
    torch.testing.assert_close(got['logits'], want['logits'], atol=1e-4, rtol=1e-4)
    assert [m.shape[0] for m in got['mask_logits']] == [2, 0, 1]
    for a, b in zip(got['mask_logits'], want['mask_logits']):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    with torch.no_grad():
        want = model(**make_batch(model), mode='predict')
        got = reloaded(**make_batch(reloaded), mode='predict')
    for a, b in zip(got, want):
        assert b.pred_text and a.pred_text == b.pred_text
        assert torch.equal(a.pred_instances.masks, b.pred_instances.masks)


def test_llm_folder_loads_with_transformers_alone(trained, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = trained[0]
    hf = AutoModelForCausalLM.from_pretrained(osp.join(exported, 'llm')).eval()
    assert type(hf).__name__ == 'LlamaForCausalLM'
    tokenizer = AutoTokenizer.from_pretrained(osp.join(exported, 'llm'))
    assert tokenizer.convert_tokens_to_ids(model.codebook.tokens) == model.codebook.token_ids
    text = 'USER: where is it? ASSISTANT: It is ' + model.codebook.target_text + ' .</s>'
    ids = model.tokenizer(text).input_ids
    assert tokenizer(text).input_ids == ids
    assert set(model.codebook.token_ids) <= set(ids)
    ids = torch.tensor([ids])
    with torch.no_grad():
        want = model.llm(model.llm.embed(ids))['logits']
        got = hf(input_ids=ids).logits
    assert got.shape[-1] == len(model.tokenizer)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_config_switch_builds_from_a_moved_folder(trained, exported, tmp_path):
    from pixellm.registry import MODELS
    folder = str(tmp_path / 'moved')
    shutil.copytree(exported, folder)
    model = MODELS.build(dict(type='ExportedPixelLM', folder=folder,
                              overrides={'max_new_tokens': 4,
                                         'llm.attn_implementation': 'eager'}))
    assert type(model).__name__ == 'PixelLM' and model.max_new_tokens == 4
    assert model.llm.hf_model.config._attn_implementation == 'eager'
    # The added rows are trainable again, the frozen parts stay frozen.
    assert model.llm.new_embed.requires_grad
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    torch.testing.assert_close(model.llm.new_embed, trained[0].llm.new_embed)
    before = model.pixel_decoder.mask_tokens.weight.clone()
    model.init_weights()  # what a runner does before training: must keep the loaded weights
    assert torch.equal(model.pixel_decoder.mask_tokens.weight, before)


def test_a_folder_from_before_the_text_processor_still_loads(trained, exported, tmp_path):
    from pixellm.models import load_exported
    from pixellm.models.export import CONFIG_FILE
    folder = str(tmp_path / 'old')
    shutil.copytree(exported, folder)
    with open(osp.join(folder, CONFIG_FILE)) as f:
        info = json.load(f)
    # The layout of earlier exports: tokenizer, codebook and use_im_start_end in the model.
    text = info['model'].pop('text_processor')
    info['model'].update(tokenizer=text['tokenizer'], use_im_start_end=text['use_im_start_end'],
                         codebook={k: v for k, v in text['codebook'].items()
                                   if k != 'num_scales'})
    with open(osp.join(folder, CONFIG_FILE), 'w') as f:
        json.dump(info, f)
    model = load_exported(folder)
    assert model.codebook.token_ids == trained[0].codebook.token_ids
    assert model.text_processor.codebook_tokens == trained[0].codebook.tokens


def test_overrides_that_change_shapes_are_refused(exported):
    from pixellm.models import CheckpointMismatchError, load_exported
    shape = re.escape('pixel_decoder.iou_token.weight (file (1, 64), model (1, 32))')
    with pytest.raises(CheckpointMismatchError, match=shape):
        load_exported(exported, overrides={'pixel_decoder.embed_dim': 32})


def test_mismatched_checkpoint_stops_with_the_keys(tool, trained, tmp_path):
    state = {k: v.clone() for k, v in trained[0].state_dict().items()}
    del state['projector.layers.0.bias']
    state['extra_head.weight'] = torch.zeros(2)
    state['llm.new_embed'] = torch.zeros(7, 128)
    ckpt = tmp_path / 'other.pth'
    torch.save(dict(state_dict=state), ckpt)
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as err:
        tool.main([TINY_MODEL_CFG, str(ckpt), str(out)])
    message = str(err.value)
    assert 'projector.layers.0.bias' in message and 'missing' in message
    assert 'extra_head.weight' in message
    assert 'llm.new_embed (file (7, 128), model (6, 128))' in message
    assert sorted(os.listdir(tmp_path)) == ['other.pth']  # nothing half-written


def test_existing_output_is_kept_without_overwrite(tool, trained, tmp_path):
    (tmp_path / 'keep.txt').write_text('x')
    with pytest.raises(SystemExit, match='--overwrite'):
        tool.main([TINY_MODEL_CFG, trained[1], str(tmp_path)])
    assert os.listdir(tmp_path) == ['keep.txt']


def test_tied_tables_fold_untie_and_split_back(tmp_path):
    from pixellm.models.llms import HFCausalLM
    llm_config = dict(model_type='llama', vocab_size=64, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    llm = HFCausalLM(llm_config=llm_config).eval()
    llm.add_token_rows(3)
    with torch.no_grad():
        llm.new_embed.add_(torch.randn(3, 32))
        llm.new_head.add_(torch.randn(3, 32))
    embed, head = llm.new_embed.detach().clone(), llm.new_head.detach().clone()
    ids = torch.tensor([[1, 64, 5, 66, 65]])
    with torch.no_grad():
        want = llm(llm.embed(ids))['logits']
        llm.fold_added_rows()
        assert llm.new_embed.shape[0] == 0 and llm.base_vocab_size == llm.vocab_size == 67
        assert llm.hf_model.config.tie_word_embeddings is False
        torch.testing.assert_close(llm(llm.embed(ids))['logits'], want)
    llm.hf_model.save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match='67 rows'):
        HFCausalLM(pretrained=str(tmp_path), base_vocab_size=70)
    back = HFCausalLM(pretrained=str(tmp_path), base_vocab_size=64).eval()
    assert back.base_vocab_size == 64 and back.hf_model.config.vocab_size == 64
    assert torch.equal(back.new_embed, embed) and torch.equal(back.new_head, head)
    with torch.no_grad():
        torch.testing.assert_close(back(back.embed(ids))['logits'], want)


def test_runner_tests_the_folder_like_the_checkpoint(trained, exported, tmp_path, capsys):
    """The config switch through mmengine's runner (what tools/test.py runs), on a tiny MUSE set:
    the runner builds the model from the folder, loads nothing more and keeps the weights."""
    from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
    from pixellm.engine.runner_build import build_runner
    from pixellm.utils import load_config
    data_root = str(tmp_path / 'muse')
    generate_muse_scenes(data_root, num_train=1, num_val=3, seed=5)
    options = {'test_dataloader.dataset.data_root': data_root,
               'test_dataloader.num_workers': 0, 'test_dataloader.batch_size': 2,
               'train_dataloader': None, 'train_cfg': None, 'optim_wrapper': None,
               'param_scheduler': None}
    # The folder through the documented --cfg-options recipe, with nothing to load_from.
    switch = {'model._delete_': True, 'model.type': 'ExportedPixelLM', 'model.folder': exported}
    metrics = {}
    for name in ('original', 'exported'):
        cfg = load_config(DEMO_CFG, cfg_options=dict(options, **switch) if name == 'exported'
                          else options)
        if name == 'original':  # as tools/test.py runs the trained checkpoint
            cfg.model, cfg.load_from = tiny_model_cfg(), trained[1]
        else:
            assert cfg.model == dict(type='ExportedPixelLM', folder=exported)
            cfg.load_from = None
        cfg.work_dir = str(tmp_path / name)
        runner = build_runner(cfg)
        metrics[name] = runner.test()
    assert metrics['exported']['num_samples'] > 0
    assert metrics['exported'] == metrics['original']
    for key, value in trained[0].state_dict().items():
        if not key.startswith('llm.model.'):  # the LLM's keys change with the merge
            assert torch.equal(runner.model.state_dict()[key], value), key
    # tools/test.py takes the folder in place of a checkpoint file.
    import importlib
    test_tool = importlib.import_module('tools.test')
    via_tool = test_tool.main([DEMO_CFG, exported, '--work-dir', str(tmp_path / 'tool'),
                               '--cfg-options', *[f'{k}={v}' for k, v in options.items()]])
    assert via_tool == metrics['original']
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        test_tool.main([DEMO_CFG, str(tmp_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f'error: {tmp_path}: checkpoint does not exist (a folder needs pixellm_config.json')


def test_dtype_casts_the_llm_only(tool, trained, tmp_path):
    out = str(tmp_path / 'bf16')
    info = tool.main([TINY_MODEL_CFG, trained[1], out, '--dtype', 'bfloat16'])
    assert info['llm_dtype'] == 'bfloat16' and info['model']['llm']['torch_dtype'] == 'bfloat16'
    llm = load_file(osp.join(out, 'llm', 'model.safetensors'))
    assert {t.dtype for t in llm.values()} == {torch.bfloat16}
    parts = load_file(osp.join(out, 'pixellm.safetensors'))
    assert {t.dtype for t in parts.values()} == {torch.float32}
    torch.testing.assert_close(llm['lm_head.weight'][1024:].float(), trained[0].llm.new_head,
                               atol=1e-2, rtol=1e-2)


def test_whole_table_training_loads_across_the_switch_and_exports_for_inference(trained,
                                                                                tmp_path):
    """A checkpoint trained with only the added rows loads into a model that trains the whole
    tables (bf16 LLM, float32 tables) and computes the same; that model exports a folder that
    loads for inference, tables in the LLM's dtype and frozen."""
    from pixellm.models import load_exported
    from pixellm.models.export import export_pixellm
    model = trained[0]
    llm_cfg = dict(tiny_model_cfg()['llm'], torch_dtype='bfloat16')
    rows_only = build_tiny(seed=2, llm=llm_cfg).eval()
    rows_only.load_state_dict(model.state_dict())
    whole_cfg = tiny_model_cfg(llm=dict(llm_cfg, train_token_tables=True))
    whole = build_tiny(seed=3, llm=whole_cfg['llm']).eval()
    whole.load_state_dict(rows_only.state_dict())  # strict: same keys, tables cast to float32
    table = whole.llm.hf_model.get_input_embeddings().weight
    assert table.dtype == torch.float32 and table.requires_grad
    with torch.no_grad():
        want = rows_only(**make_batch(rows_only), mode='tensor')
        got = whole(**make_batch(whole), mode='tensor')
    torch.testing.assert_close(got['logits'], want['logits'])
    # And back: the float32 tables load into the rows-only model (cast to bf16).
    back = build_tiny(seed=4, llm=llm_cfg).eval()
    back.load_state_dict(whole.state_dict())
    assert torch.equal(back.llm.hf_model.get_input_embeddings().weight,
                       rows_only.llm.hf_model.get_input_embeddings().weight)

    out = str(tmp_path / 'export')
    info = export_pixellm(whole, whole_cfg, out)
    assert info['model']['llm']['train_token_tables'] is False
    assert info['llm_dtype'] == 'bfloat16'
    reloaded = load_exported(out).eval()
    head = reloaded.llm.hf_model.get_output_embeddings().weight
    assert head.dtype == torch.bfloat16 and not head.requires_grad
    with torch.no_grad():
        again = reloaded(**make_batch(reloaded), mode='tensor')
    torch.testing.assert_close(again['logits'], want['logits'], atol=0.05, rtol=0.05)
