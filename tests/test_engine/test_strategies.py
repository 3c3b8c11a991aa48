"""pixellm.engine.strategies: ``PixelLMDeepSpeedStrategy`` is built by name as ``FlexibleRunner``
builds strategies, sets up what mmengine's ``DeepSpeedStrategy`` sets up (these tests fail first
when mmengine's constructor changes) and registers only the DeepSpeed optimizers that exist."""
import importlib.util
import inspect
import types

import pytest
from mmengine._strategy import SingleDeviceStrategy
from mmengine._strategy import deepspeed as mmengine_deepspeed
from mmengine.registry import OPTIMIZERS, STRATEGIES, DefaultScope
from mmengine.runner import FlexibleRunner

from pixellm.engine import (PixelLMDeepSpeedStrategy, install_mmengine_fixes,
                            register_available_deepspeed_optimizers)
from pixellm.engine.deepspeed_config import apply_deepspeed
from pixellm.utils import register_all_modules

ORIGINAL_REGISTER = mmengine_deepspeed.register_deepspeed_optimizers
# Every argument of DeepSpeedStrategy set to something other than its default.
STRATEGY_ARGS = dict(
    config=dict(zero_optimization=dict(stage=3), bf16=dict(enabled=False), aio=dict(x=0)),
    zero_optimization=dict(stage=2, overlap_comm=True), gradient_clipping=1.0,
    fp16=dict(enabled=False), inputs_to_half=['inputs'], bf16=dict(enabled=True),
    amp=dict(enabled=False), activation_checkpointing=dict(partition_activations=True),
    aio=dict(block_size=1048576), train_micro_batch_size_per_gpu=2,
    gradient_accumulation_steps=4, steps_per_print=7, exclude_frozen_parameters=True)


def _copy(args):
    """``args`` with fresh inner dicts: the strategies update the ``config`` dict they get."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in args.items()}


@pytest.mark.parametrize('args', [STRATEGY_ARGS, dict(config=dict(zero_optimization=dict(
    stage=2)))], ids=['every_argument', 'config_only'])
def test_construction_sets_up_what_mmengine_deepspeed_strategy_sets_up(
        tmp_path, monkeypatch, args):
    # mmengine's own constructor runs here with the optimizer registration stubbed out.
    monkeypatch.setattr(mmengine_deepspeed, 'register_deepspeed_optimizers', lambda: [])
    reference = mmengine_deepspeed.DeepSpeedStrategy(work_dir=str(tmp_path), **_copy(args))
    monkeypatch.undo()
    ours = PixelLMDeepSpeedStrategy(work_dir=str(tmp_path), **_copy(args))

    assert set(vars(ours)) == set(vars(reference))
    # What DeepSpeedStrategy sets beyond BaseStrategy holds the same values.
    base = set(vars(SingleDeviceStrategy(work_dir=str(tmp_path))))
    own = set(vars(reference)) - base
    assert {'config', '_inputs_to_half', 'exclude_frozen_parameters'} <= own
    for name in own:
        assert getattr(ours, name) == getattr(reference, name), name


def test_constructor_takes_the_arguments_of_mmengine_deepspeed_strategy():
    theirs = inspect.signature(mmengine_deepspeed.DeepSpeedStrategy.__init__).parameters
    ours = inspect.signature(PixelLMDeepSpeedStrategy.__init__).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == \
        [(p.name, p.kind, p.default) for p in theirs.values()]
    # The one step left out: mmengine's constructor ends by registering the optimizers.
    assert 'register_deepspeed_optimizers()' in inspect.getsource(
        mmengine_deepspeed.DeepSpeedStrategy.__init__)


def test_registers_only_existing_optimizers_and_changes_nothing_in_mmengine(
        tmp_path, monkeypatch):
    install_mmengine_fixes()
    for name in ('DeepSpeedCPUAdam', 'FusedAdam', 'FusedLamb'):
        monkeypatch.delitem(OPTIMIZERS.module_dict, name, raising=False)
    strategy = PixelLMDeepSpeedStrategy(config=dict(zero_optimization=dict(stage=2)),
                                        work_dir=str(tmp_path))
    assert strategy.config['zero_optimization'] == dict(stage=2)
    # Construction registered them, so a config can name them as its optimizer.
    assert OPTIMIZERS.get('FusedAdam').__module__.startswith('deepspeed.')
    assert {'DeepSpeedCPUAdam', 'FusedAdam', 'FusedLamb'} <= set(
        register_available_deepspeed_optimizers())
    assert mmengine_deepspeed.register_deepspeed_optimizers is ORIGINAL_REGISTER
    assert 'PixelLMDeepSpeedStrategy' not in STRATEGIES.module_dict  # mmengine's root registry
    if importlib.util.find_spec('deepspeed.runtime.fp16.onebit') is None:
        # Why the subclass exists: mmengine's constructor imports the removed 1-bit optimizers.
        with pytest.raises(ImportError, match='onebit'):
            mmengine_deepspeed.DeepSpeedStrategy(work_dir=str(tmp_path))


def _runner_stub(work_dir):
    """The attributes ``FlexibleRunner.build_strategy`` reads from the runner."""
    return types.SimpleNamespace(_work_dir=str(work_dir), _auto_scale_lr=None,
                                 _train_dataloader=None)


def test_flexible_runner_builds_the_strategy_apply_deepspeed_names(tmp_path):
    from mmengine.config import Config
    cfg = Config(dict(launcher='pytorch', train_dataloader=dict(batch_size=2),
                      optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW'))))
    apply_deepspeed(cfg, 'zero2')
    assert cfg.strategy.type == 'PixelLMDeepSpeedStrategy'
    # FlexibleRunner builds its strategy before it sets the config's default scope: the
    # strategy must resolve whatever scope is current.
    for scope in ('mmengine', 'pixellm'):
        with DefaultScope.overwrite_default_scope(scope):
            strategy = FlexibleRunner.build_strategy(
                _runner_stub(tmp_path), strategy=cfg.strategy.to_dict(),
                randomness=dict(seed=0), env_cfg=dict(dist_cfg=dict(backend='gloo')),
                log_level='INFO')  # as FlexibleRunner passes its own (default 'INFO')
        assert type(strategy) is PixelLMDeepSpeedStrategy, scope
        assert strategy.config['zero_optimization']['stage'] == 2


@pytest.mark.parametrize('strategy', [
    dict(type='PixelLMDeepSpeedStrategy'),
    dict(type='PixelLMDeepSpeedStrategy', _scope_='pixellm'),
    dict(type='pixellm.PixelLMDeepSpeedStrategy'),
], ids=['no_scope', 'scope_key', 'scoped_name'])
def test_the_strategy_resolves_by_name_under_pixellm_scope(tmp_path, strategy):
    register_all_modules(init_default_scope=True)
    with DefaultScope.overwrite_default_scope('pixellm'):
        built = STRATEGIES.build(dict(strategy, work_dir=str(tmp_path)))
    assert type(built) is PixelLMDeepSpeedStrategy
