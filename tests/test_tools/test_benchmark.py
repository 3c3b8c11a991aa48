"""tools/analysis/benchmark.py: runs on the tiny config, analytic FLOPs match torch's counter and
a hand formula, and the random-init builder never reads ``pretrained``. No timing is asserted."""
import json
import os.path as osp

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixellm.models.meta_build import build_on_meta, build_random_init, count_parameters
from pixellm.utils import load_config
from conftest import REPO, TINY_MODEL_CFG, load_tool, tiny_model_cfg

DEMO_CFG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')
MODEL_7B_CFG = osp.join(REPO, 'configs', '_base_', 'models', 'pixellm_7b.py')
# The analytic count and FlopCounterMode agree exactly on these models (same matmuls, convs and
# attention products); the tolerance only absorbs float rounding of the large sums.
REL_TOL = 1e-6


@pytest.fixture(scope='module')
def bench():
    return load_tool('analysis/benchmark')


def test_runs_both_modes_and_writes_json(bench, tmp_path):
    out = tmp_path / 'bench.json'
    bench.main([DEMO_CFG, '--mode', 'both', '--device', 'cpu', '--dtype', 'fp32', '--steps', '2',
                '--warmup', '0', '--batch-size', '2', '--seq-len', '160', '--targets', '2',
                '--new-tokens', '12', '--peak-size', '128', '--out', str(out)])
    result = json.loads(out.read_text())
    for key in ('config', 'device', 'device_name', 'dtype', 'peak_tflops', 'peak_matmul_size',
                'params_total', 'params_trainable', 'date', 'runs'):
        assert key in result, key
    assert result['peak_tflops'] > 0
    assert [r['mode'] for r in result['runs']] == ['train', 'infer']
    for run in result['runs']:
        for key in ('samples_per_s', 'tokens_per_s', 'flops_per_step', 'achieved_tflops', 'mfu',
                    'peak_memory_bytes', 'batch_size', 'flops_breakdown'):
            assert run[key] > 0 if not isinstance(run[key], dict) else run[key], key
        assert set(run['step_time_s']) == {'mean', 'p50', 'p90'}
        assert run['steps'] == 2
        assert run['flops_per_step'] == pytest.approx(sum(run['flops_breakdown'].values()))
    train, infer = result['runs']
    assert train['batch_size'] == 2 and train['seq_len'] == 160
    assert train['flops_breakdown']['decoder_transformer'] > 0  # 2 targets x 2 samples decoded
    assert infer['new_tokens'] == 12 and infer['batch_size'] == 1
    assert infer['predicted_masks'] == 1  # 12 tokens fit one forced target (11 ids)
    assert infer['flops_breakdown']['decoder_transformer'] > 0


def _counted(fn):
    # The math backend runs attention as matmuls, which FlopCounterMode counts; the CPU flash
    # kernel chosen by default has no FLOP formula registered and would be counted as zero.
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize('cfg_path', [TINY_MODEL_CFG, DEMO_CFG],
                         ids=['frozen_clip_lora', 'all_trained'])
def test_analytic_flops_match_flop_counter(bench, cfg_path):
    model = build_random_init(load_config(cfg_path).model)
    batch, seq_len, targets = 2, 160, 2  # the demo LLM sees 64 image tokens
    images, samples = bench.synthetic_batch(model, batch, seq_len, targets)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), True)
    model.train()

    def forward():
        with torch.no_grad():
            model(**data, mode='tensor')

    def train():
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        loss.backward()

    analytic = bench.forward_flops(model, batch, seq_len, targets * batch)
    assert analytic['decoder_transformer'] > 0
    assert _counted(forward) == pytest.approx(sum(analytic.values()), rel=REL_TOL)
    analytic = bench.train_step_flops(model, batch, seq_len, targets * batch)
    assert _counted(train) == pytest.approx(sum(analytic.values()), rel=REL_TOL)

    model.eval()
    new_tokens = 16
    model.max_new_tokens = new_tokens
    forced = bench.forced_answer_ids(model, 1, new_tokens)
    steer = bench.GenerationSteer(model, forced)
    images, samples = bench.synthetic_batch(model, 1, seq_len, targets)
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), False)
    found = {}

    def predict():
        with torch.no_grad():
            found['masks'] = len(model(**data, mode='predict')[0].pred_instances)

    counted = _counted(predict)
    prompt_len = len(samples[0].prompt_ids) - 1 + model.llm_image_grid ** 2
    steer.remove()
    assert found['masks'] == 1  # the steered answer names one target: the decoder runs
    analytic = bench.generate_flops(model, prompt_len, new_tokens, found['masks'])
    assert counted == pytest.approx(sum(analytic.values()), rel=REL_TOL)


def test_training_multipliers_follow_what_trains(bench):
    """Frozen CLIP: forward only; LoRA's frozen base: fwd + input grad; trained: 3x."""
    frozen = build_on_meta(tiny_model_cfg())
    trained = build_on_meta(load_config(DEMO_CFG).model.to_dict())
    for model, enc_mult, llm_mult in ((frozen, 1, 2), (trained, 3, 3)):
        fwd = bench.forward_flops(model, 1, 64, 1)
        bwd = bench.train_step_flops(model, 1, 64, 1)
        assert bwd['encoder_matmul'] == enc_mult * fwd['encoder_matmul']
        assert bwd['llm_matmul'] == llm_mult * fwd['llm_matmul']
        assert bwd['llm_attention'] == 3 * fwd['llm_attention']
        assert bwd['decoder_transformer'] == 3 * fwd['decoder_transformer']
    assert bench.train_step_flops(frozen, 1, 64, 1)['llm_lora'] > 0


def test_7b_flops_per_token_equal_hand_formula(bench):
    cfg = load_config(MODEL_7B_CFG).model
    model = build_on_meta(cfg)  # meta device: shapes only, no memory, no download
    llama = cfg.llm.llm_config
    d, ffn, layers = llama.hidden_size, llama.intermediate_size, llama.num_hidden_layers
    # vocabulary + 2 scales x 3 codebook tokens + <im_start>/<im_end>
    vocab = llama.vocab_size + 2 * 3 + 2
    r = cfg.llm.lora.r
    per_layer = 4 * d * d + 3 * d * ffn + 2 * r * (d + d)  # q,k,v,o + gate,up,down + LoRA(q,v)
    matmul_params = layers * per_layer + d * vocab
    for seq_len in (1, 512, 2048):
        hand = 2 * matmul_params + 4 * layers * seq_len * d
        assert bench.llm_flops_per_token(model, seq_len) == pytest.approx(hand, rel=1e-12)


def test_7b_synthetic_batch_fills_the_token_budget(bench):
    """The 7B config's download-only tokenizer falls back to the padded tiny one."""
    model = build_on_meta(load_config(MODEL_7B_CFG).model)
    images, samples = bench.synthetic_batch(model, 1, 512, 3)
    assert images[0].shape == (3, 448, 448)
    assert len(samples[0].input_ids) - 1 + 256 == 512
    assert model.codebook.count_targets(samples[0].input_ids[None])[0] == 3
    assert int(samples[0].input_ids.max()) < model.llm.vocab_size
    assert samples[0].gt_instances.masks.shape == (3, 448, 448)


def test_random_init_builder_ignores_pretrained():
    bogus = '/nonexistent/weights/never-read'
    cfg = tiny_model_cfg()
    cfg['vision_encoder'] = dict(cfg['vision_encoder'], pretrained=bogus)
    cfg['llm'] = dict(cfg['llm'], pretrained=bogus)
    model = build_random_init(cfg, seed=1)
    assert count_parameters(model) == count_parameters(build_on_meta(tiny_model_cfg()))
    assert all(p.device.type == 'cpu' for p in model.parameters())
    again = build_random_init(cfg, seed=1)
    other = build_random_init(cfg, seed=2)
    key = 'pixel_decoder.text_hidden_fcs.0.weight'
    assert torch.equal(model.state_dict()[key], again.state_dict()[key])
    assert not torch.equal(model.state_dict()[key], other.state_dict()[key])
    with pytest.raises(ValueError, match='llm_config'):
        build_random_init(dict(cfg, llm=dict(type='HFCausalLM', pretrained=bogus)))


def test_7b_recipe_path_runs_shrunk_on_cpu(bench, tmp_path):
    """The GPU recipe's path (LoRA, frozen CLIP, AmpOptimWrapper, bf16, <im_start>/<im_end>,
    download-only tokenizer) runs on the CPU with the shapes shrunk through --cfg-options."""
    llm, vit = 'model.llm.llm_config.', 'model.vision_encoder.vision_config.'
    recipe = osp.join(REPO, 'configs', 'pixellm', 'pixellm_7b_lora_8xb2_ga10_5k_mix.py')
    result = bench.main([
        recipe, '--device', 'cpu', '--dtype', 'bf16', '--steps', '1', '--warmup', '0',
        '--batch-size', '1', '--seq-len', '340', '--targets', '1', '--new-tokens', '12', '--peak-size', '128',
        '--cfg-options', f'{llm}hidden_size=64', f'{llm}intermediate_size=128',
        f'{llm}num_hidden_layers=1', f'{llm}num_attention_heads=2', f'{llm}num_key_value_heads=2',
        f'{vit}hidden_size=32', f'{vit}intermediate_size=64', f'{vit}num_attention_heads=2',
        f'{vit}num_hidden_layers=11', 'model.pixel_decoder.embed_dim=32',
        'model.pixel_decoder.mlp_dim=64', 'model.pixel_decoder.num_heads=2'])
    train, infer = result['runs']
    assert result['dtype'] == 'bf16' and result['params_trainable'] < result['params_total']
    assert train['flops_breakdown']['llm_lora'] > 0
    assert infer['predicted_masks'] == 1


def test_profile_writes_operator_tables_and_part_times(bench, tmp_path):
    """--profile writes both modes' top operators and per-part forward times; without
    --new-tokens, inference generates enough tokens for every target of --targets."""
    prof = tmp_path / 'prof'
    result = bench.main([DEMO_CFG, '--mode', 'both', '--device', 'cpu', '--dtype', 'fp32',
                         '--steps', '1', '--warmup', '0', '--batch-size', '1', '--seq-len', '160',
                         '--targets', '3', '--peak-size', '128', '--profile', str(prof)])
    infer = result['runs'][1]
    model_cfg = load_config(DEMO_CFG).model
    tok = build_random_init(model_cfg).tokenizer
    needed = len(tok(' and '.join(['[SEG0] [SEG1] [SEG2] [SEG3] [SEG4] [SEG5]'] * 3),
                     add_special_tokens=False).input_ids) + 1
    assert infer['new_tokens'] == max(32, needed)
    assert infer['predicted_masks'] == 3
    for mode in ('train', 'infer'):
        ops = (prof / f'{mode}_ops.txt').read_text()
        assert 'aten::mm' in ops or 'aten::addmm' in ops
        lines = (prof / f'{mode}_modules.txt').read_text().splitlines()
        parts = {line.split()[0]: line.split() for line in lines[1:]}
        assert {'llm', 'vision_encoder', 'projector', 'pixel_decoder'} <= set(parts)
        # One LLM forward per training step; one per generated token at inference.
        calls = int(parts['llm'][-1])
        assert calls == (1 if mode == 'train' else infer['new_tokens'])
        assert all(float(p[1]) > 0 for p in parts.values())  # host time, on the CPU too
        assert len(parts['llm']) == 5  # name, host, kernel and device-span ms, calls


def test_an_llm_block_of_another_shape_is_refused(bench):
    """The FLOP formulas are LLaMA's; a block with other linears stops the count."""
    with_lora = build_on_meta(tiny_model_cfg())  # LoRA wrappers are looked through
    bench.llm_flops(with_lora, 8, 8)
    mlp = with_lora.llm.hf_model.get_decoder().layers[0].mlp
    mlp.gate_proj = torch.nn.Linear(mlp.gate_proj.in_features, 7, device='meta')
    with pytest.raises(ValueError, match="'gate_proj': \\(128, 7\\)"):
        bench.llm_flops(with_lora, 8, 8)
