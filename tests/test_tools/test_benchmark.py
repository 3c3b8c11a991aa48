"""tools/analysis/benchmark.py: runs on the tiny config, analytic FLOPs match torch's counter and
a hand formula, and the random-init builder never reads ``pretrained``. No timing is asserted."""
import json
import os.path as osp

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixellm.analysis import flops
from pixellm.models.meta_build import build_on_meta, build_random_init, count_parameters
from pixellm.utils import load_config
from conftest import REPO, TINY_MODEL_CFG, load_tool, tiny_model_cfg

DEMO_CFG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')
LISA_TINY_CFG = osp.join(REPO, 'configs', '_base_', 'models', 'lisa_tiny.py')
DOT_CFG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo_dotdecoder.py')
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


@pytest.mark.parametrize('cfg_path', [TINY_MODEL_CFG, DEMO_CFG, LISA_TINY_CFG, DOT_CFG],
                         ids=['frozen_clip_lora', 'all_trained', 'lisa', 'plugin_decoder'])
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

    analytic = flops.forward_flops(model, batch, seq_len, targets * batch)
    assert sum(v for k, v in analytic.items() if k.startswith('decoder_')) > 0
    assert _counted(forward) == pytest.approx(sum(analytic.values()), rel=REL_TOL)
    analytic = flops.train_step_flops(model, batch, seq_len, targets * batch)
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
    analytic = flops.generate_flops(model, prompt_len, new_tokens, found['masks'])
    assert counted == pytest.approx(sum(analytic.values()), rel=REL_TOL)


LISA_7B_CFG = osp.join(REPO, 'configs', '_base_', 'models', 'lisa_7b.py')


@pytest.mark.parametrize('train_mask_decoder', [True, False], ids=['lisa', 'frozen_decoder'])
def test_full_size_lisa_parts_match_flop_counter_on_meta(train_mask_decoder):
    """At LISA-7B's shapes, on the meta device (shapes only): SAM ViT-H on the 1024 input (its
    64x64 grid padded to 70x70 for the 14-wide windows), the CLIP towers at 224 and PixelLM's
    448, and LISA's mask decoder trained on two images of 3 and 2 targets."""
    cfg = load_config(LISA_7B_CFG).model
    cfg.pixel_decoder.train_mask_decoder = train_mask_decoder
    lisa = build_on_meta(cfg)
    pixellm = build_on_meta(load_config(MODEL_7B_CFG).model)
    for model, role in ((lisa, 'mask_encoder'), (lisa, 'vision_encoder'),
                        (pixellm, 'vision_encoder')):
        enc = getattr(model, role)
        size = enc.image_size
        images = torch.empty(2, 3, size, size, device='meta')

        def encode():
            with torch.no_grad():
                enc(images, [(size, size)] * 2)

        analytic = flops.component_flops(enc, role, 2)
        assert _counted(encode) == pytest.approx(sum(analytic.values()), rel=REL_TOL), role
    dec = lisa.pixel_decoder
    feats = [torch.empty(2, dec.grid_size ** 2, dec.feat_channels, device='meta')]
    states = [torch.empty(n, 1, 1, dec.in_channels, device='meta', requires_grad=True)
              for n in (3, 2)]

    def train():
        sum(m.sum() for m in dec(states, feats)).backward()

    analytic = flops.pixel_decoder_flops(lisa, 5, 2, training=True)
    assert analytic['decoder_iou_head'] > 0
    assert _counted(train) == pytest.approx(sum(analytic.values()), rel=REL_TOL)


@pytest.mark.parametrize('tokens, counts, feats_grad', [(2, (3, 0, 2), True), (1, (0, 4), False)])
def test_lisa_decoder_variants_match_flop_counter(tokens, counts, feats_grad):
    """LISA's decoder at SAM's shapes with several prompt tokens per target, an image without
    targets and image features that need a gradient (a trained mask encoder)."""
    from pixellm.models.pixel_decoders import LISAMaskDecoder
    with torch.device('meta'):
        dec = LISAMaskDecoder(in_channels=4096, feat_channels=256, grid_size=64, input_size=1024,
                              tokens_per_scale=tokens)
    feats = [torch.empty(len(counts), 64 * 64, 256, device='meta', requires_grad=feats_grad)]
    states = [torch.empty(n, 1, tokens, 4096, device='meta', requires_grad=True) for n in counts]

    def train():
        sum(m.sum() for m in dec(states, feats)).backward()

    analytic = flops.component_flops(dec, 'pixel_decoder', sum(counts), len(counts), True,
                                     feats_grad)
    assert _counted(train) == pytest.approx(sum(analytic.values()), rel=REL_TOL)


@pytest.mark.parametrize('train_neck, feats_grad', [(False, True), (False, False), (True, False)],
                         ids=['recipe', 'frozen_features', 'trained_neck'])
def test_pixellm_decoder_variants_match_flop_counter(train_neck, feats_grad):
    """PixelLM-7B's decoder at its shapes, on the meta device: frozen neck and fusion weights as
    the recipe sets them (features from trained projectors), with features that need no
    gradient, and with the neck and fusion weights trained; an image without targets."""
    dec = build_on_meta(load_config(MODEL_7B_CFG).model).pixel_decoder
    assert not flops._trainable(dec.image_feature_neck) and not dec.token_fusion.requires_grad
    if train_neck:
        dec.image_feature_neck.requires_grad_(True)
        dec.token_fusion.requires_grad_(True)
    counts = (3, 0, 2)
    feats = [torch.empty(len(counts), dec.grid_size ** 2, dec.feat_channels, device='meta',
                         requires_grad=feats_grad) for _ in range(dec.num_scales)]
    states = [torch.empty(n, dec.num_scales, dec.tokens_per_scale, dec.in_channels,
                          device='meta', requires_grad=True) for n in counts]

    def train():
        sum(m.sum() for m in dec(states, feats)).backward()

    analytic = flops.component_flops(dec, 'pixel_decoder', sum(counts), len(counts), True,
                                     feats_grad)
    # Exactly: the fusion weights' gradient is a few thousand FLOPs of about 1e11.
    assert _counted(train) == sum(analytic.values())


def test_trained_sam_encoder_with_padded_windows_matches_flop_counter():
    """A trained SAM-layout encoder whose grid (8) is not a multiple of its window (3): forward
    and backward over the padded windows; a partly trained one is refused."""
    from pixellm.models.vision_encoders import SAMImageEncoder
    enc = SAMImageEncoder(vision_config=dict(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, global_attn_indexes=(1, ),
        window_size=3, image_size=128, patch_size=16, output_channels=16, num_pos_feats=8,
        mlp_dim=64), frozen=False).train()
    images = torch.randn(2, 3, 128, 128)

    def train():
        enc(images)[0].sum().backward()

    analytic = flops.component_flops(enc, 'mask_encoder', 2, True)
    assert _counted(train) == pytest.approx(sum(analytic.values()), rel=REL_TOL)
    enc.image_encoder.neck.requires_grad_(False)
    with pytest.raises(flops.FlopCountError, match='SAMImageEncoder is partly trained'):
        flops.component_flops(enc, 'mask_encoder', 2, True)


def test_flops_only_counts_the_recipe_on_meta(bench):
    """--flops-only builds the LISA-7B recipe on the meta device and gives the counts of the
    steps the benchmark would time, at the recipe's shapes."""
    recipe = osp.join(REPO, 'configs', 'lisa', 'lisa_7b_lora_8xb2_ga10_5k_mix.py')
    result = bench.main([recipe, '--flops-only', '--targets', '3', '--new-tokens', '38'])
    model = build_on_meta(load_config(recipe).model)
    train, infer = result['runs']
    assert result['device'] == 'meta'
    assert result['params_total'] == count_parameters(model)[0]
    assert (train['batch_size'], train['seq_len']) == (2, 512)  # the recipe's batch, max length
    assert train['flops_breakdown'] == flops.train_step_flops(model, 2, 512, 6)
    assert infer['predicted_masks'] == 3 and infer['new_tokens'] == 38
    assert infer['flops_breakdown'] == flops.generate_flops(model, infer['prompt_len'], 38, 3)
    assert infer['flops_breakdown']['mask_encoder_matmul'] > 0


def test_pixellm_against_lisa_table_is_what_the_tool_counts(bench):
    """docs/benchmark.md's PixelLM-against-LISA totals are the tool's --flops-only output for the
    four recipes, with the command the doc gives."""
    doc = open(osp.join(REPO, 'docs', 'benchmark.md')).read()
    section = doc.split('## PixelLM against LISA')[1].split('\n## ')[0]
    recipes = {'PixelLM-7B': 'pixellm/pixellm_7b_lora_8xb2_ga10_5k_mix.py',
               'LISA-7B': 'lisa/lisa_7b_lora_8xb2_ga10_5k_mix.py',
               'PixelLM-13B': 'pixellm/pixellm_13b_lora_8xb2_ga10_5k_mix.py',
               'LISA-13B': 'lisa/lisa_13b_lora_8xb2_ga10_5k_mix.py'}
    rows = {line.split('|')[1].split('(')[0].strip(): line for line in section.splitlines()
            if line.startswith('| ') and '**' in line and not line.startswith('| model')}
    assert set(rows) == set(recipes)
    for name, recipe in recipes.items():
        assert f'configs/{recipe}' in section
        result = bench.main([osp.join(REPO, 'configs', recipe), '--flops-only', '--targets', '3',
                             '--new-tokens', '38'])
        totals = [f'**{r["flops_per_step"] / 1e12:.2f}**' for r in result['runs']]
        cells = [c.strip() for c in rows[name].split('|') if c.strip().startswith('**')]
        assert cells == totals, name


def test_data_batches_count_the_config_data(bench, tmp_path):
    """--data-batches counts each training batch of the config's loader as FlopCounterMode
    counts the model's real training step on that batch (padding and targets included)."""
    from mmengine.runner import Runner, set_random_seed

    from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
    data_root = str(tmp_path / 'data')
    generate_muse_scenes(data_root, num_train=4, num_val=1, seed=3, max_size=160)
    config = osp.join(REPO, 'projects', 'pixellm_tiny_demo', 'configs', 'lisa_tiny_demo.py')
    options = [f'train_dataloader.dataset.data_root={data_root}', 'train_dataloader.batch_size=2']
    result = bench.main([config, '--flops-only', '--mode', 'train', '--data-batches', '2',
                         '--cfg-options', *options])
    run = result['runs'][0]
    assert run['batches'] == 2 and run['batch_size'] == 2

    cfg = load_config(config, cfg_options=dict(o.split('=', 1) for o in options))
    cfg.train_dataloader.batch_size = 2
    model = build_random_init(cfg.model)
    model.train()
    set_random_seed(cfg.randomness.seed)  # the pipeline's draws, as the tool seeds them
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=cfg.randomness.seed)
    counted = []
    for _, data in zip(range(2), loader):
        data = model.data_preprocessor(data, True)

        def train():
            loss, _ = model.parse_losses(model(**data, mode='loss'))
            loss.backward()

        counted.append(_counted(train))
    assert run['flops_per_step'] == pytest.approx(sum(counted) / 2, rel=REL_TOL)
    assert counted[0] != counted[1]  # the two batches differ, so the mean is of both


def test_a_component_without_a_formula_is_refused():
    """A component of a class with no FLOP formula stops the count, naming the component."""
    model = build_on_meta(tiny_model_cfg())

    class OwnDecoder(torch.nn.Module):
        pass

    model.pixel_decoder = OwnDecoder()
    with pytest.raises(ValueError, match='no FLOP formula for the pixel_decoder OwnDecoder'):
        flops.forward_flops(model, 1, 64, 1)

    @flops.flop_formula(OwnDecoder)
    def own(dec, num_targets, batch, training=False, feats_grad=True):
        return dict(decoder_own=7.0 * num_targets)

    try:
        assert flops.forward_flops(model, 1, 64, 2)['decoder_own'] == 14.0
    finally:
        flops._FORMULAS.pop(OwnDecoder)


def test_training_multipliers_follow_what_trains(bench):
    """Frozen CLIP: forward only; LoRA's frozen base: fwd + input grad; trained: 3x."""
    frozen = build_on_meta(tiny_model_cfg())
    trained = build_on_meta(load_config(DEMO_CFG).model.to_dict())
    for model, enc_mult, llm_mult in ((frozen, 1, 2), (trained, 3, 3)):
        fwd = flops.forward_flops(model, 1, 64, 1)
        bwd = flops.train_step_flops(model, 1, 64, 1)
        assert bwd['encoder_matmul'] == enc_mult * fwd['encoder_matmul']
        assert bwd['llm_matmul'] == llm_mult * fwd['llm_matmul']
        assert bwd['llm_attention'] == 3 * fwd['llm_attention']
        assert bwd['decoder_transformer'] == 3 * fwd['decoder_transformer']
    assert flops.train_step_flops(frozen, 1, 64, 1)['llm_lora'] > 0


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
        assert flops.llm_flops_per_token(model, seq_len) == pytest.approx(hand, rel=1e-12)


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


@pytest.mark.parametrize('options, message', [
    (['--flops-only', '--steps', '3', '--device', 'cpu'],
     '--device, --steps time the steps; --flops-only runs none'),
    (['--flops-only', '--profile', 'prof'], '--profile time the steps; --flops-only runs none'),
    (['--data-batches', '2'], '--data-batches counts the training step on the config\'s data'),
    (['--flops-only', '--mode', 'infer', '--data-batches', '2'], '--data-batches counts'),
    (['--flops-only', '--data-batches', '0'], '--data-batches must be at least 1, got 0'),
    (['--flops-only', '--seq-len', '0'], '--seq-len must be at least 1, got 0'),
])
def test_options_it_would_ignore_or_cannot_use_are_refused(bench, options, message):
    """One line naming the options, before any model is built."""
    with pytest.raises(SystemExit) as exc:
        bench.main([DEMO_CFG, *options])
    assert str(exc.value).startswith(f'error: {message}'), exc.value
    assert '\n' not in str(exc.value)


def test_an_llm_block_of_another_shape_is_refused(bench):
    """The FLOP formulas are LLaMA's; a block with other linears stops the count."""
    with_lora = build_on_meta(tiny_model_cfg())  # LoRA wrappers are looked through
    flops.llm_flops(with_lora, 8, 8)
    mlp = with_lora.llm.hf_model.get_decoder().layers[0].mlp
    mlp.gate_proj = torch.nn.Linear(mlp.gate_proj.in_features, 7, device='meta')
    with pytest.raises(ValueError, match="'gate_proj': \\(128, 7\\)"):
        flops.llm_flops(with_lora, 8, 8)
