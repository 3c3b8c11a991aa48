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
2. **FSDP wrap policy by name.** ``pixellm_layer_wrap_policy`` (one FSDP unit per transformer
   block, :func:`pixellm.engine.fsdp.layer_wrap_policy`) is registered in mmengine's
   ``FUNCTIONS``, where ``FSDPStrategy`` looks ``auto_wrap_policy`` up.

:func:`pixellm.utils.config.package_folders` (absolute base imports of configs) is the one other
such change; it holds only while :func:`pixellm.utils.load_config` parses a file. DeepSpeed needs
none: ``--deepspeed`` builds pixellm's own subclass of mmengine's strategy
(:class:`pixellm.engine.strategies.PixelLMDeepSpeedStrategy`).
"""


def install_safe_checkpoint_loader() -> None:
    """Make mmengine read local checkpoints through ``load_checkpoint_safely``; idempotent."""
    from mmengine.runner import CheckpointLoader

    from .checkpoint import _load_from_local
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)


def register_fsdp_wrap_policy() -> None:
    """Register ``pixellm_layer_wrap_policy`` in mmengine's ``FUNCTIONS``; idempotent."""
    from mmengine.registry import FUNCTIONS

    from .fsdp import FSDP_WRAP_POLICY, layer_wrap_policy
    if FUNCTIONS.get(FSDP_WRAP_POLICY) is None:
        FUNCTIONS.register_module(name=FSDP_WRAP_POLICY, module=layer_wrap_policy)


def install_mmengine_fixes() -> None:
    """Install the two changes listed in the module docstring; safe to call repeatedly."""
    install_safe_checkpoint_loader()
    register_fsdp_wrap_policy()
