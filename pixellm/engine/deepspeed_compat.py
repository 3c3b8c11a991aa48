"""Let mmengine 0.10.7's ``DeepSpeedStrategy`` build with DeepSpeed releases without 1-bit Adam.

``DeepSpeedStrategy.__init__`` ends with ``register_deepspeed_optimizers()``, which imports
``OnebitAdam``, ``OnebitLamb`` and ``ZeroOneAdam`` from ``deepspeed.runtime.fp16.onebit``. DeepSpeed
removed the 1-bit and 0/1 Adam optimizers (deepspeedai/DeepSpeed#8490), so with deepspeed 0.19.8
every ``DeepSpeedStrategy`` fails with ``ModuleNotFoundError: No module named
'deepspeed.runtime.fp16.onebit'``, on GPUs as on the CPU. :func:`install_deepspeed_compat`, run
once when this module is imported (``import pixellm.engine``), replaces that module-level function
with :func:`register_available_deepspeed_optimizers`. Importing ``mmengine.runner`` already
imports ``mmengine._strategy.deepspeed`` (and DeepSpeed, when installed), so this costs nothing.
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


def install_deepspeed_compat() -> None:
    """Make ``DeepSpeedStrategy`` register only the DeepSpeed optimizers that exist; idempotent."""
    try:
        from mmengine._strategy import deepspeed as mmengine_deepspeed
    except ImportError:
        return
    mmengine_deepspeed.register_deepspeed_optimizers = register_available_deepspeed_optimizers


install_deepspeed_compat()
