"""Training/testing machinery on mmengine: safe checkpoint loading, atomic saves, exact resume.

Importing this package changes nothing in mmengine; it registers pixellm's classes (hooks,
:class:`PixelLMDeepSpeedStrategy`) in pixellm's registries. :func:`build_runner` (used by every
tool) first calls :func:`install_mmengine_fixes` (see :mod:`pixellm.engine.mmengine_fixes`): safe
checkpoint loading for ``load_from``/``--resume`` and the FSDP wrap policy by name. Code that
builds mmengine's ``Runner`` itself calls it first.
"""
from .checkpoint import (AtomicLocalBackend, BadCheckpointError, UntrustedCheckpointError,
                         allow_checkpoint_globals, atomic_write_bytes, atomic_write_text,
                         check_checkpoint_file, checkpoint_trust_enabled, load_checkpoint_safely,
                         mmengine_checkpoint_globals, save_checkpoint_atomic, set_checkpoint_trust,
                         trusted_checkpoints)
from .mmengine_fixes import install_mmengine_fixes, install_safe_checkpoint_loader
from .strategies import PixelLMDeepSpeedStrategy, register_available_deepspeed_optimizers
from .hooks import (AtomicCheckpointHook, GradDigestHook, PixelLMVisualizationHook, RNGStateHook,
                    capture_rng_state, restore_rng_state)
from .deepspeed_config import apply_deepspeed
from .distributed import prepare_cpu_distributed
from .runner_build import build_runner, format_metrics
from .tool_config import (add_common_arguments, apply_amp, apply_resume, apply_seed, apply_work_dir,
                          check_data_or_exit, enable_resume_safety, load_tool_config, set_show_dir)

__all__ = [
    'AtomicCheckpointHook', 'AtomicLocalBackend', 'BadCheckpointError', 'GradDigestHook',
    'PixelLMDeepSpeedStrategy', 'PixelLMVisualizationHook', 'RNGStateHook',
    'UntrustedCheckpointError',
    'add_common_arguments', 'allow_checkpoint_globals', 'apply_amp', 'apply_deepspeed',
    'apply_resume', 'apply_seed', 'apply_work_dir', 'atomic_write_bytes', 'atomic_write_text',
    'build_runner', 'capture_rng_state', 'check_checkpoint_file', 'check_data_or_exit',
    'checkpoint_trust_enabled', 'enable_resume_safety', 'format_metrics',
    'install_mmengine_fixes', 'install_safe_checkpoint_loader', 'load_checkpoint_safely',
    'load_tool_config', 'mmengine_checkpoint_globals', 'prepare_cpu_distributed',
    'register_available_deepspeed_optimizers', 'restore_rng_state',
    'save_checkpoint_atomic', 'set_checkpoint_trust', 'set_show_dir', 'trusted_checkpoints'
]
