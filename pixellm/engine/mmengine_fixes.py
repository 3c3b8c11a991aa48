"""Every place where pixellm changes how mmengine (0.10.7) behaves, installed on request only.

Nothing here runs when pixellm is imported. :func:`pixellm.engine.build_runner` (the runner of
every tool and of :mod:`pixellm.apis`) calls :func:`install_mmengine_fixes` before it builds a
runner; code that builds mmengine's ``Runner`` itself calls it first. Each change is checked by a
test that fails when the upstream code it relies on changes
(``tests/test_engine/test_mmengine_fixes.py``).

1. **Checkpoints are read safely.** The ``''`` (local file) scheme of
   ``mmengine.runner.CheckpointLoader`` becomes :func:`~pixellm.engine.load_checkpoint_safely`
   (allow-listed ``weights_only`` unpickling), through mmengine's public ``register_scheme``, so
   ``load_from`` and ``--resume`` can run no code from a checkpoint.
2. **DeepSpeed without 1-bit Adam.** ``DeepSpeedStrategy.__init__`` ends with the module-level
   ``mmengine._strategy.deepspeed.register_deepspeed_optimizers()``, which imports ``OnebitAdam``,
   ``OnebitLamb`` and ``ZeroOneAdam`` from ``deepspeed.runtime.fp16.onebit``. DeepSpeed removed
   them (deepspeedai/DeepSpeed#8490), so with deepspeed 0.19.8 every ``DeepSpeedStrategy`` fails
   with ``ModuleNotFoundError``. That function is replaced by
   :func:`register_available_deepspeed_optimizers`.
3. **FSDP wrap policy by name.** ``pixellm_layer_wrap_policy`` (one FSDP unit per transformer
   block, :func:`pixellm.engine.fsdp.layer_wrap_policy`) is registered in mmengine's
   ``FUNCTIONS``, where ``FSDPStrategy`` looks ``auto_wrap_policy`` up.

:func:`pixellm.utils.config.package_folders` (absolute base imports of configs) is the one other
such change; it holds only while :func:`pixellm.utils.load_config` parses a file.
"""
import importlib
from typing import List

from mmengine.registry import OPTIMIZERS

# mmengine 0.10.7's list, in its order.
_DEEPSPEED_OPTIMIZERS = (
    ('deepspeed.ops.adam', 'DeepSpeedCPUAdam'),
    ('deepspeed.ops.adam', 'FusedAdam'),
    ('deepspeed.ops.lamb', 'FusedLamb'),
    ('deepspeed.runtime.fp16.onebit', 'OnebitAdam'),
    ('deepspeed.runtime.fp16.onebit', 'OnebitLamb'),
    ('deepspeed.runtime.fp16.onebit', 'ZeroOneAdam'),
)


def register_available_deepspeed_optimizers() -> List[str]:
    """Register in mmengine's ``OPTIMIZERS`` those of mmengine's DeepSpeed optimizers that exist.

    Returns:
        list[str]: The registered names (empty without DeepSpeed).
    """
    names = []
    for module_name, name in _DEEPSPEED_OPTIMIZERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        optimizer = getattr(module, name, None)
        if optimizer is not None:
            # force: every DeepSpeedStrategy registers them again.
            OPTIMIZERS.register_module(module=optimizer, force=True)
            names.append(name)
    return names


def install_safe_checkpoint_loader() -> None:
    """Make mmengine read local checkpoints through ``load_checkpoint_safely``; idempotent."""
    from mmengine.runner import CheckpointLoader

    from .checkpoint import _load_from_local
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)


def install_deepspeed_compat() -> None:
    """Make ``DeepSpeedStrategy`` register only the DeepSpeed optimizers that exist; idempotent."""
    try:
        from mmengine._strategy import deepspeed as mmengine_deepspeed
    except ImportError:
        return
    mmengine_deepspeed.register_deepspeed_optimizers = register_available_deepspeed_optimizers


def register_fsdp_wrap_policy() -> None:
    """Register ``pixellm_layer_wrap_policy`` in mmengine's ``FUNCTIONS``; idempotent."""
    from mmengine.registry import FUNCTIONS

    from .fsdp import FSDP_WRAP_POLICY, layer_wrap_policy
    if FUNCTIONS.get(FSDP_WRAP_POLICY) is None:
        FUNCTIONS.register_module(name=FSDP_WRAP_POLICY, module=layer_wrap_policy)


def install_mmengine_fixes() -> None:
    """Install the three changes listed in the module docstring; safe to call repeatedly."""
    install_safe_checkpoint_loader()
    install_deepspeed_compat()
    register_fsdp_wrap_policy()
