"""Distributed training: ``--deepspeed`` config conversion, and DDP and DeepSpeed ZeRO-2 on the CPU
(gloo) through ``tools/dist_train.sh``, each matching one process with the same global batch."""
import json
import os
import os.path as osp
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from conftest import load_tool
from mmengine.config import Config

from pixellm.engine import load_checkpoint_safely
from pixellm.engine.deepspeed_config import (apply_deepspeed, deepspeed_config_names,
                                             resolve_deepspeed_config)
from pixellm.engine.distributed import prepare_cpu_distributed
from pixellm.utils import load_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, 'tests', 'test_engine', 'toy')
TOY_DIST = osp.join(TOY, 'toy_dist.py')
RECIPE_7B = osp.join(REPO, 'configs', 'pixellm', 'pixellm_7b_lora_8xb2_ga10_5k_mix.py')
ITERS = 4


# ------------------------------------------------------------------ apply_deepspeed (no processes)

def _train_cfg(**optim_wrapper):
    """A minimal training config as tools/train.py hands it to apply_deepspeed."""
    wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))
    wrapper.update(optim_wrapper)
    return Config(dict(launcher='pytorch', optim_wrapper=wrapper,
                       train_dataloader=dict(batch_size=2, dataset=dict(type='X'))))


def _json(tmp_path, **entries):
    path = tmp_path / 'ds.json'
    path.write_text(json.dumps(entries))
    return str(path)


def test_shipped_deepspeed_configs_are_listed():
    assert deepspeed_config_names() == ['zero2', 'zero2_offload', 'zero3']


def test_7b_recipe_becomes_flexible_runner_with_zero2_from_its_own_settings():
    cfg = load_config(RECIPE_7B, import_plugins=False)
    cfg.launcher = 'pytorch'
    optimizer = cfg.optim_wrapper.optimizer.to_dict()
    notes = apply_deepspeed(cfg, 'zero2')

    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.strategy.type == 'PixelLMDeepSpeedStrategy'
    ds = cfg.strategy.config
    # batch_size=2 per GPU, accumulative_counts=10, clip_grad max_norm=1.0, bf16 AmpOptimWrapper.
    assert ds['train_micro_batch_size_per_gpu'] == 2
    assert ds['gradient_accumulation_steps'] == 10
    assert ds['gradient_clipping'] == 1.0
    assert ds['bf16'] == {'enabled': True}
    assert ds['zero_optimization']['stage'] == 2
    assert cfg.optim_wrapper.to_dict() == dict(type='DeepSpeedOptimWrapper', optimizer=optimizer)
    assert 'AmpOptimWrapper -> DeepSpeedOptimWrapper' in '\n'.join(notes)


@pytest.mark.parametrize('name,stage,offload', [('zero2', 2, None), ('zero2_offload', 2, 'cpu'),
                                                ('zero3', 3, None)])
def test_each_shipped_config_fills_every_auto_value(name, stage, offload):
    cfg = _train_cfg()
    apply_deepspeed(cfg, name)
    ds = cfg.strategy.config
    assert ds['zero_optimization']['stage'] == stage
    assert ds['zero_optimization'].get('offload_optimizer', {}).get('device') == offload
    # Float32 OptimWrapper without clip_grad: no bf16, no clipping, no accumulation.
    assert (ds['train_micro_batch_size_per_gpu'], ds['gradient_accumulation_steps'],
            ds['gradient_clipping'], ds['bf16']['enabled']) == (2, 1, 0.0, False)
    assert 'auto' not in json.dumps(ds)


def test_mismatched_batch_settings_stop_with_both_values(tmp_path):
    cfg = _train_cfg(accumulative_counts=10)
    path = _json(tmp_path, train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1,
                 zero_optimization=dict(stage=2))
    with pytest.raises(ValueError) as err:
        apply_deepspeed(cfg, path)
    message = str(err.value)
    assert 'train_micro_batch_size_per_gpu=4 but train_dataloader.batch_size=2' in message
    assert 'gradient_accumulation_steps=1 but optim_wrapper.accumulative_counts=10' in message
    assert path in message
    # Nothing was switched.
    assert 'runner_type' not in cfg and cfg.optim_wrapper.type == 'OptimWrapper'


def test_matching_numbers_are_accepted_and_train_batch_size_auto_is_left_to_deepspeed(tmp_path):
    cfg = _train_cfg(accumulative_counts=3, clip_grad=dict(max_norm=0.5))
    path = _json(tmp_path, train_micro_batch_size_per_gpu=2, gradient_accumulation_steps=3,
                 gradient_clipping=0.5, train_batch_size='auto')
    apply_deepspeed(cfg, path)
    ds = cfg.strategy.config
    assert (ds['train_micro_batch_size_per_gpu'], ds['gradient_accumulation_steps'],
            ds['gradient_clipping']) == (2, 3, 0.5)
    assert 'train_batch_size' not in ds


def test_explicit_precision_and_clipping_must_match_the_config(tmp_path):
    path = _json(tmp_path, gradient_clipping=1.0, bf16=dict(enabled=True))
    with pytest.raises(ValueError) as err:
        apply_deepspeed(_train_cfg(), path)
    assert 'gradient_clipping=1.0 but optim_wrapper.clip_grad.max_norm' in str(err.value)
    assert 'bf16.enabled=True but the config trains in fp32' in str(err.value)


def test_unfillable_auto_is_named():
    with pytest.raises(ValueError, match=r"\['zero_optimization.stage'\]"):
        resolve_deepspeed_config(dict(zero_optimization=dict(stage='auto')), micro_batch_size=1,
                                 accumulation_steps=1, max_norm=0.0, precision='fp32')


@pytest.mark.parametrize('optim_wrapper,match', [
    (dict(type='AmpOptimWrapper', dtype='float16'), "dtype='float16'"),
    (dict(type='AmpOptimWrapper'), 'dtype=None'),
    (dict(clip_grad=dict(type='value', clip_value=1.0)), 'L2 norm'),
    (dict(type='ApexOptimWrapper'), "'ApexOptimWrapper' cannot be converted"),
    (dict(cast_model_dtype='bfloat16'), r"\['cast_model_dtype'\] have no DeepSpeed"),
])
def test_optimizer_wrappers_deepspeed_cannot_express_are_refused(optim_wrapper, match):
    with pytest.raises(ValueError, match=match):
        apply_deepspeed(_train_cfg(**optim_wrapper), 'zero2')


def test_plain_checkpoint_as_load_from_is_refused(tmp_path):
    ckpt = tmp_path / 'iter_2.pth'
    torch.save(dict(state_dict={}), ckpt)
    cfg = _train_cfg()
    cfg.load_from = str(ckpt)
    with pytest.raises(ValueError, match='only DeepSpeed checkpoint folders'):
        apply_deepspeed(cfg, 'zero2')


def test_unknown_name_lists_the_shipped_configs():
    with pytest.raises(FileNotFoundError, match=r"'zero4'.*\['zero2', 'zero2_offload', 'zero3'\]"):
        apply_deepspeed(_train_cfg(), 'zero4')


def test_train_without_launcher_exits_pointing_to_dist_train(tmp_path):
    train = load_tool('train')
    with pytest.raises(SystemExit) as err:
        train.main([TOY_DIST, '--work-dir', str(tmp_path), '--deepspeed', 'zero2'])
    assert 'needs a distributed launcher' in str(err.value)
    assert 'tools/dist_train.sh CONFIG GPUS --deepspeed zero2' in str(err.value)


def test_cpu_preparation_leaves_single_process_configs_alone():
    cfg = Config(dict(launcher='none', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert prepare_cpu_distributed(cfg) == []
    assert 'model_wrapper_cfg' not in cfg


# ----------------------------------------------------------- multi-process training on the CPU

def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _env():
    # CPU only, also on a GPU machine: gloo, DeepSpeed's CPU accelerator, one thread per process.
    return dict(os.environ, CUDA_VISIBLE_DEVICES='', DS_ACCELERATOR='cpu', OMP_NUM_THREADS='1',
                PYTHON=sys.executable, PORT=str(_free_port()))


def _check(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def _train(work_dir, *extra):
    """One process, tools/train.py."""
    return _check(subprocess.run(
        [sys.executable, 'tools/train.py', TOY_DIST, '--work-dir', str(work_dir), *extra],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300))


def _dist_train(nproc, work_dir, *extra):
    """``nproc`` processes through tools/dist_train.sh (torchrun, --launcher pytorch).

    ZeRO-3 keeps its process groups alive past the teardown (its parameters and hooks hold
    them; see ``shutdown_distributed``), so its gloo threads are still torn down at interpreter
    exit, which now and then aborts a process ("terminate called without an active exception",
    SIGABRT). A fresh ZeRO-3 run (not a resume) that ends so is deterministic, so it is run once
    more from an empty work dir. Every other run must end cleanly the first time.
    """
    cmd = ['bash', 'tools/dist_train.sh', TOY_DIST, str(nproc), '--work-dir', str(work_dir),
           *extra]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    aborted = 'terminate called without an active exception' in result.stdout + result.stderr
    zero3 = 'zero3' in extra
    if result.returncode != 0 and aborted and zero3 and '--resume' not in extra:
        shutil.rmtree(work_dir)
        os.makedirs(work_dir)
        result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                                timeout=300)
    return _check(result)


def _losses(work_dir, rank):
    with open(osp.join(work_dir, f'losses_rank{rank}.jsonl')) as f:
        return [json.loads(line) for line in f]


def _mean_rank_losses(work_dir, world_size):
    per_rank = [_losses(work_dir, rank) for rank in range(world_size)]
    for records in per_rank:
        assert [r['iter'] for r in records] == list(range(1, ITERS + 1))
    return [sum(r[i]['loss'] for r in per_rank) / world_size for i in range(ITERS)], per_rank


def _assert_close_weights(state, reference):
    assert state.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.fixture(scope='module')
def single_process(tmp_path_factory):
    """The reference: one process with the global batch of two processes (2 x 4)."""
    work_dir = tmp_path_factory.mktemp('single')
    _train(work_dir, '--cfg-options', 'train_dataloader.batch_size=8')
    losses = [r['loss'] for r in _losses(work_dir, 0)]
    assert len(losses) == ITERS and len(set(losses)) == ITERS  # it trains
    weights = {it: load_checkpoint_safely(str(work_dir / f'iter_{it}.pth'))['state_dict']
               for it in (2, ITERS)}
    return losses, weights, work_dir


def test_ddp_on_two_gloo_processes_matches_one_process(tmp_path, single_process):
    ref_losses, ref_weights, _ = single_process
    work_dir = tmp_path / 'ddp'
    _dist_train(2, work_dir)

    mean, per_rank = _mean_rank_losses(work_dir, 2)
    # Each rank saw different samples; together they saw the reference's batch.
    assert all(abs(a['loss'] - b['loss']) > 1e-3 for a, b in zip(*per_rank))
    torch.testing.assert_close(mean, ref_losses, rtol=1e-5, atol=1e-7)
    ckpt = load_checkpoint_safely(str(work_dir / f'iter_{ITERS}.pth'))
    _assert_close_weights(ckpt['state_dict'], ref_weights[ITERS])


def _deepspeed_module(work_dir, it):
    """The model weights of a DeepSpeed checkpoint folder ``iter_<it>.pth/``."""
    folder = work_dir / f'iter_{it}.pth'
    assert folder.is_dir(), sorted(os.listdir(work_dir))
    # ZeRO partitions the optimizer state: one shard per rank.
    shards = sorted(p.name for p in folder.glob('*optim_states.pt'))
    assert shards == ['zero_pp_rank_0_mp_rank_00_optim_states.pt',
                      'zero_pp_rank_1_mp_rank_00_optim_states.pt']
    states = torch.load(folder / 'mp_rank_00_model_states.pt', map_location='cpu',
                        weights_only=False)
    return states['module']


def test_deepspeed_zero2_on_two_gloo_processes_trains_and_resumes_like_one_process(
        tmp_path, single_process):
    ref_losses, ref_weights, _ = single_process
    work_dir = tmp_path / 'zero2'
    # Stops after iteration 2 (its checkpoint), then resumes from last_checkpoint to ITERS.
    _dist_train(2, work_dir, '--deepspeed', 'zero2', '--cfg-options', 'train_cfg.max_iters=2')
    _assert_close_weights(_deepspeed_module(work_dir, 2), ref_weights[2])
    _dist_train(2, work_dir, '--deepspeed', 'zero2', '--resume')

    # The resumed run trained iterations 3 and 4 only, continuing the losses of one process.
    mean, _ = _mean_rank_losses(work_dir, 2)
    torch.testing.assert_close(mean, ref_losses, rtol=1e-5, atol=1e-7)
    # AdamW moments and the LR schedule came back: iteration 4 equals the unbroken reference.
    _assert_close_weights(_deepspeed_module(work_dir, ITERS), ref_weights[ITERS])
    with open(work_dir / 'last_checkpoint') as f:
        assert f.read() == str(work_dir / f'iter_{ITERS}.pth')


def test_dist_test_on_two_gloo_processes_scores_every_sample_once(tmp_path, single_process):
    _, ref_weights, single_dir = single_process
    out_json = tmp_path / 'metrics.json'
    # Noise-free test data, so the expected error can be computed here.
    _check(subprocess.run(
        ['bash', 'tools/dist_test.sh', TOY_DIST, str(single_dir / f'iter_{ITERS}.pth'), '2',
         '--work-dir', str(tmp_path / 'test'), '--out', str(out_json), '--cfg-options',
         'test_dataloader.dataset.noise=0.0'],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300))
    metrics = json.loads(out_json.read_text())

    if TOY not in sys.path:  # the toy plugins, found by tools/train.py next to the config
        sys.path.insert(0, TOY)
    from pixellm_dist_toy import SeededEngineToyModel
    from pixellm_engine_toy import EngineToyDataset
    model = SeededEngineToyModel(dropout=0.0).eval()
    model.load_state_dict(ref_weights[ITERS])
    data = EngineToyDataset(length=8, noise=0.0)
    with torch.no_grad():
        pred = model(list(data.x))
    # Each rank scored 4 of the 8 samples; rank 0 reports all 8.
    assert metrics['count'] == 8
    assert metrics['mse'] == pytest.approx(float(((pred - data.y) ** 2).mean()), rel=1e-5)


@pytest.mark.parametrize('name', ['zero3', 'zero2_offload'])
def test_other_deepspeed_configs_on_two_gloo_processes_follow_one_process(
        tmp_path, single_process, name):
    ref_losses, _, _ = single_process
    work_dir = tmp_path / name
    _dist_train(2, work_dir, '--deepspeed', name)
    mean, _ = _mean_rank_losses(work_dir, 2)
    # Every loss after the first is computed with weights the partitioned update produced.
    torch.testing.assert_close(mean, ref_losses, rtol=1e-5, atol=1e-7)
    folder = work_dir / f'iter_{ITERS}.pth'
    # ZeRO-3 partitions the weights as well: one model-state shard per rank.
    model_states = sorted(p.name for p in folder.glob('*model_states.pt'))
    assert model_states == (
        ['zero_pp_rank_0_mp_rank_00_model_states.pt', 'zero_pp_rank_1_mp_rank_00_model_states.pt']
        if name == 'zero3' else ['mp_rank_00_model_states.pt'])


# ------------------------------------------- generation in step with sharded weights (ZeRO-3)

VAL_FROM_CKPT = osp.join(REPO, 'tests', 'test_engine', 'configs',
                         'pixellm_tiny_val_from_checkpoint.py')


def _val_metrics(log_text):
    found = re.findall(r'Iter\(val\) \[\d+/\d+\].*?\bgIoU: ([0-9.]+)\s+cIoU: ([0-9.]+)',
                       log_text)
    assert found, log_text[-3000:]
    return tuple(float(v) for v in found[-1])


@pytest.mark.parametrize('launch', [('--deepspeed', 'zero3'), ('--fsdp', )],
                         ids=['zero3', 'fsdp'])
def test_validation_with_generation_under_sharded_weights_does_not_deadlock(
        tmp_path, trained_tiny, launch):
    """Two ranks answer different questions, so their answers end at different steps; with
    ZeRO-3 or FSDP every layer call gathers weights from both ranks. Without generation in step
    the rank that finishes first leaves the other waiting (ZeRO-3: the run hangs until the
    timeout; FSDP: the gathers mismatch and the run fails)."""
    # One training step on one question, the same batch on every rank and in one process.
    records = json.load(open(osp.join(trained_tiny['data_root'], 'muse_train.json')))
    one = tmp_path / 'one_question.json'
    one.write_text(json.dumps([dict(records[0], questions=records[0]['questions'][:1],
                                    answers=records[0]['answers'][:1],
                                    **({'text_answers': records[0]['text_answers'][:1]}
                                       if 'text_answers' in records[0] else {}))]))
    options = ['--cfg-options', f'model.init_cfg.checkpoint={trained_tiny["checkpoint"]}',
               f'val_dataloader.dataset.data_root={trained_tiny["data_root"]}',
               *trained_tiny['cfg_options'], f'train_dataloader.dataset.ann_file={one}',
               'train_dataloader.batch_size=2', 'default_hooks.checkpoint.interval=1']
    cmd = ['bash', 'tools/dist_train.sh', VAL_FROM_CKPT, '2', *launch,
           '--work-dir', str(tmp_path / 'sharded'), *options]
    result = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=240)
    sharded = _val_metrics(_check(result))
    # The same weights validated by one process without sharding give the same scores.
    single = _val_metrics(_check(subprocess.run(
        [sys.executable, 'tools/train.py', VAL_FROM_CKPT, '--work-dir', str(tmp_path / 'one'),
         *options], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)))
    assert sharded == pytest.approx(single, abs=1e-4)
    if launch == ('--fsdp', ):
        # FSDP checkpoints hold the full state dict: an ordinary .pth, as one process writes.
        full = load_checkpoint_safely(str(tmp_path / 'sharded' / 'iter_1.pth'))['state_dict']
        _assert_close_weights(
            full, load_checkpoint_safely(str(tmp_path / 'one' / 'iter_1.pth'))['state_dict'])
        # The ranks' answers do end at different steps: out of step, the weight gathers of the
        # two ranks mismatch and the run fails (under ZeRO-3 it would hang instead).
        out_of_step = subprocess.run(
            ['bash', 'tools/dist_train.sh', VAL_FROM_CKPT, '2', *launch, '--work-dir',
             str(tmp_path / 'out_of_step'), *options, 'model.sync_ranks=False'],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240)
        assert out_of_step.returncode != 0
        assert 'Iter(val) [8/8]' not in out_of_step.stdout + out_of_step.stderr


def test_fsdp_on_two_gloo_processes_trains_like_one_process(tmp_path, single_process):
    ref_losses, ref_weights, _ = single_process
    work_dir = tmp_path / 'fsdp'
    log = _dist_train(2, work_dir, '--fsdp')
    assert '(CPU FSDP)' in log
    mean, _ = _mean_rank_losses(work_dir, 2)
    torch.testing.assert_close(mean, ref_losses, rtol=1e-5, atol=1e-7)
    ckpt = load_checkpoint_safely(str(work_dir / f'iter_{ITERS}.pth'))
    _assert_close_weights(ckpt['state_dict'], ref_weights[ITERS])


def test_fsdp_needs_a_launcher_and_excludes_deepspeed(tmp_path):
    from pixellm.engine.fsdp import apply_fsdp, layer_wrap_policy
    cfg = _train_cfg()
    cfg.model = dict(type='PixelLM', llm=dict(type='HFCausalLM', llm_config=dict()))
    cfg.launcher = 'none'
    with pytest.raises(ValueError, match='tools/dist_train.sh CONFIG GPUS --fsdp'):
        apply_fsdp(cfg)
    cfg.launcher = 'pytorch'
    notes = apply_fsdp(cfg)
    assert cfg.runner_type == 'FlexibleRunner' and cfg.strategy.type == 'FSDPStrategy'
    assert cfg.strategy.state_dict_cfg == 'full' and 'FSDPStrategy' in notes[0]
    import transformers
    layer = transformers.models.llama.modeling_llama.LlamaDecoderLayer(
        transformers.LlamaConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                 num_key_value_heads=2), 0)
    layer_classes = cfg.strategy.model_wrapper.auto_wrap_policy.layer_classes
    assert layer_classes == ['LlamaDecoderLayer']
    assert layer_wrap_policy(layer, False, 0, layer_classes=layer_classes)
    assert not layer_wrap_policy(torch.nn.Linear(2, 2), False, 0, layer_classes=layer_classes)
    proc = subprocess.run([sys.executable, 'tools/train.py', TOY_DIST, '--fsdp', '--deepspeed',
                           'zero2'], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and 'choose one' in proc.stderr


@pytest.mark.skipif(not osp.isdir('/proc/self/task'), reason='counts threads in /proc')
@pytest.mark.parametrize('tool,extra', [
    ('test', ['--cfg-options', 'test_dataloader.dataset.noise=0.0']),
    ('train', ['--deepspeed', 'zero2']),
    ('train', ['--deepspeed', 'zero2_offload']),
    ('train', ['--fsdp']),
], ids=['ddp_test', 'deepspeed_zero2_train', 'deepspeed_zero2_offload_train', 'fsdp_train'])
def test_finished_two_process_run_leaves_no_communication_threads(
        tmp_path, single_process, tool, extra):
    # A process group still alive at interpreter exit tears gloo's threads down there, which
    # aborts a finished run now and then (SIGABRT; CI saw it on tools/dist_test.sh). DDP's
    # wrapper and DeepSpeed's engine and group registry hold the groups unless the tools
    # release them.
    _, _, single_dir = single_process
    args = [TOY_DIST, str(single_dir / f'iter_{ITERS}.pth')] if tool == 'test' else [TOY_DIST]
    out = _check(subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         f'--master_port={_free_port()}', osp.join(TOY, 'run_tool_count_threads.py'), tool,
         *args, '--launcher', 'pytorch', '--work-dir', str(tmp_path), *extra],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300))
    counts = re.findall(r'rank (\d) threads: (\d+) before, (\d+) after', out)
    assert sorted(rank for rank, _, _ in counts) == ['0', '1'], out[-3000:]
    for rank, before, after in counts:
        assert after == before, f'rank {rank}: {int(after) - int(before)} threads left\n' + \
            out[-3000:]
    assert 'still referenced after destroy_process_group' not in out
