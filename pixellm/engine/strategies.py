"""``PixelLMDeepSpeedStrategy``: mmengine's DeepSpeed strategy for the DeepSpeed releases pixellm
runs on, registered in pixellm's ``STRATEGIES`` (what ``--deepspeed`` selects)."""
import importlib
from typing import List, Optional, Union

from mmengine._strategy import BaseStrategy, DeepSpeedStrategy
from mmengine.registry import OPTIMIZERS
from mmengine.utils import digit_version

from pixellm.registry import STRATEGIES

# The DeepSpeed optimizers mmengine 0.10.7 registers, in its order. The 1-bit ones are gone from
# current DeepSpeed (deepspeedai/DeepSpeed#8490); each is registered only where it exists.
DEEPSPEED_OPTIMIZERS = (
    ('deepspeed.ops.adam', 'DeepSpeedCPUAdam'),
    ('deepspeed.ops.adam', 'FusedAdam'),
    ('deepspeed.ops.lamb', 'FusedLamb'),
    ('deepspeed.runtime.fp16.onebit', 'OnebitAdam'),
    ('deepspeed.runtime.fp16.onebit', 'OnebitLamb'),
    ('deepspeed.runtime.fp16.onebit', 'ZeroOneAdam'),
)

# Keyword arguments of the strategy that are top-level sections of the DeepSpeed config; a value
# given here replaces the one in ``config``.
DEEPSPEED_CONFIG_SECTIONS = ('zero_optimization', 'gradient_clipping', 'fp16', 'bf16', 'amp',
                             'activation_checkpointing', 'aio', 'train_micro_batch_size_per_gpu',
                             'gradient_accumulation_steps')


def register_available_deepspeed_optimizers() -> List[str]:
    """Register in mmengine's ``OPTIMIZERS`` those of :data:`DEEPSPEED_OPTIMIZERS` that exist.

    A config then names them as optimizers, e.g. ``optimizer=dict(type='FusedAdam', lr=...)``.
    Safe to call repeatedly.

    Returns:
        list[str]: The registered names (empty without DeepSpeed).
    """
    names = []
    for module_name, name in DEEPSPEED_OPTIMIZERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        optimizer = getattr(module, name, None)
        if optimizer is not None:
            # force: every strategy built registers them again.
            OPTIMIZERS.register_module(module=optimizer, force=True)
            names.append(name)
    return names


@STRATEGIES.register_module()
class PixelLMDeepSpeedStrategy(DeepSpeedStrategy):
    """Train with DeepSpeed through mmengine's ``FlexibleRunner``.

    Everything after construction (process group, ``deepspeed.initialize``, checkpoint folders,
    resuming) is mmengine's ``DeepSpeedStrategy``. Construction takes the same arguments and
    sets up the same state, but registers only the DeepSpeed optimizers the installed release
    has (:func:`register_available_deepspeed_optimizers`): mmengine 0.10.7's constructor imports
    the 1-bit Adam optimizers, which current DeepSpeed no longer ships, and so fails.

    ``tools/train.py --deepspeed`` selects it (:func:`pixellm.engine.apply_deepspeed`); a config
    names it as ``strategy=dict(type='PixelLMDeepSpeedStrategy', _scope_='pixellm',
    config=...)`` with ``runner_type='FlexibleRunner'``. ``FlexibleRunner`` fills
    ``train_micro_batch_size_per_gpu`` from the train dataloader only for a strategy named
    ``DeepSpeedStrategy``, so the DeepSpeed config must hold it (``apply_deepspeed`` fills it).

    Args:
        config (str | dict, optional): DeepSpeed config, or the path of its JSON file.
            Defaults to None (empty).
        zero_optimization, gradient_clipping, fp16, bf16, amp, activation_checkpointing, aio,
            train_micro_batch_size_per_gpu, gradient_accumulation_steps: DeepSpeed config
            sections; each one given (not None) replaces the same key of ``config``.
            ``gradient_accumulation_steps`` is 1 when neither gives it.
        inputs_to_half (list[int | str], optional): Inputs cast to half precision before the
            forward pass (fp16). Defaults to None.
        steps_per_print (int): DeepSpeed's ``steps_per_print``; the default is large enough to
            keep DeepSpeed's own step log off.
        exclude_frozen_parameters (bool, optional): Leave frozen parameters out of checkpoints
            (DeepSpeed >= 0.13.2). Defaults to None.
        **kwargs: Arguments of mmengine's ``BaseStrategy`` (``work_dir``, ``env_kwargs``,
            ``log_kwargs``...), which ``FlexibleRunner`` passes.
    """

    def __init__(self,
                 *,
                 config: Union[str, dict, None] = None,
                 zero_optimization: Optional[dict] = None,
                 gradient_clipping: Optional[float] = None,
                 fp16: Optional[dict] = None,
                 inputs_to_half: Optional[List[Union[int, str]]] = None,
                 bf16: Optional[dict] = None,
                 amp: Optional[dict] = None,
                 activation_checkpointing: Optional[dict] = None,
                 aio: Optional[dict] = None,
                 train_micro_batch_size_per_gpu: Optional[int] = None,
                 gradient_accumulation_steps: Optional[int] = None,
                 steps_per_print: int = 10**13,
                 exclude_frozen_parameters: Optional[bool] = None,
                 **kwargs) -> None:
        try:
            import deepspeed
        except ImportError as err:
            raise ImportError('PixelLMDeepSpeedStrategy (--deepspeed) needs DeepSpeed: pip '
                              'install deepspeed') from err
        if exclude_frozen_parameters is not None and \
                digit_version(deepspeed.__version__) < digit_version('0.13.2'):
            raise ValueError(f'exclude_frozen_parameters needs DeepSpeed >= 0.13.2; '
                             f'{deepspeed.__version__} is installed')
        # DeepSpeedStrategy.__init__ would end by importing the 1-bit optimizers; its base
        # class sets up the environment, the rest is set here.
        BaseStrategy.__init__(self, **kwargs)
        sections = dict(zero_optimization=zero_optimization,
                        gradient_clipping=gradient_clipping, fp16=fp16, bf16=bf16, amp=amp,
                        activation_checkpointing=activation_checkpointing, aio=aio,
                        train_micro_batch_size_per_gpu=train_micro_batch_size_per_gpu,
                        gradient_accumulation_steps=gradient_accumulation_steps)
        self.config = self._parse_config(config)
        self.config.update({key: sections[key] for key in DEEPSPEED_CONFIG_SECTIONS
                            if sections[key] is not None})
        self.config.setdefault('gradient_accumulation_steps', 1)
        self.config['steps_per_print'] = steps_per_print
        self._inputs_to_half = inputs_to_half
        self.exclude_frozen_parameters = exclude_frozen_parameters
        register_available_deepspeed_optimizers()
