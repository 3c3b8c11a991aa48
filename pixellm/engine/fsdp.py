"""``--fsdp``: PyTorch FSDP through ``FlexibleRunner``, one unit per transformer block."""
from typing import List, Sequence

import torch
from mmengine.config import Config

from .tool_config import type_name


# Transformer blocks each FSDP unit holds: one all-gather per block in forward and backward, so a
# 7B/13B model is never gathered whole.
FSDP_LAYER_CLASSES = ('LlamaDecoderLayer', 'MistralDecoderLayer', 'Qwen2DecoderLayer',
                      'CLIPEncoderLayer')
FSDP_WRAP_POLICY = 'pixellm_layer_wrap_policy'


def layer_wrap_policy(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int,
                      layer_classes: Sequence[str] = FSDP_LAYER_CLASSES) -> bool:
    """FSDP auto-wrap policy: one unit per transformer block (by class name).

    Registered in mmengine's ``FUNCTIONS`` as ``pixellm_layer_wrap_policy``, so a config names it
    (``auto_wrap_policy=dict(type='pixellm_layer_wrap_policy', layer_classes=[...])``).

    Args:
        module (nn.Module): The module FSDP asks about.
        recurse (bool): FSDP asks whether to descend into ``module``: always.
        nonwrapped_numel (int): Parameters not yet wrapped (unused).
        layer_classes (Sequence[str]): Class names that become units.

    Returns:
        bool: Whether to descend (``recurse``) or to wrap ``module``.
    """
    return True if recurse else type(module).__name__ in tuple(layer_classes)




def apply_fsdp(cfg: Config) -> List[str]:
    """Train with PyTorch FSDP (``--fsdp``): ``FlexibleRunner`` + mmengine's ``FSDPStrategy``.

    Parameters, gradients and optimizer states are sharded over the ranks (``FULL_SHARD``), one
    unit per transformer block of the LLM and of CLIP (:data:`FSDP_LAYER_CLASSES`) plus the rest
    of the model at the root. ``use_orig_params`` keeps frozen weights, LoRA and the trainable
    token rows side by side in one unit. Checkpoints hold the full state dict (rank 0 writes an
    ordinary ``.pth`` that ``tools/test.py`` loads). The optimizer wrapper of
    the config stays: ``OptimWrapper``, or ``AmpOptimWrapper`` (bf16 autocast) on GPUs.
    Generation during validation runs in step across ranks (``PixelLM.sync_ranks``).

    Args:
        cfg (Config): The config after the command-line overrides, edited in place.

    Returns:
        list[str]: One line per change, for the log.

    Raises:
        ValueError: No launcher, or the config already chose another runner strategy.
    """
    if cfg.get('launcher', 'none') == 'none':
        raise ValueError('--fsdp needs a distributed launcher: run tools/dist_train.sh CONFIG '
                         'GPUS --fsdp, or torchrun ... tools/train.py --launcher pytorch --fsdp.')
    if cfg.get('strategy') and type_name(cfg.strategy.get('type')) != 'FSDPStrategy':
        raise ValueError(f'--fsdp: the config already sets strategy '
                         f'{type_name(cfg.strategy.get("type"))}; use one of them.')
    wrapper = dict(type='MMFullyShardedDataParallel', _scope_='mmengine',
                   sharding_strategy='FULL_SHARD', use_orig_params=True,
                   auto_wrap_policy=dict(type=FSDP_WRAP_POLICY,
                                         layer_classes=list(FSDP_LAYER_CLASSES)))
    cfg.runner_type = 'FlexibleRunner'
    cfg.strategy = dict(type='FSDPStrategy', _scope_='mmengine', model_wrapper=wrapper,
                        state_dict_cfg='full')
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict(dist_cfg=dict(backend='nccl'))
    return [f'runner: FlexibleRunner with FSDPStrategy (FULL_SHARD, one unit per '
            f'{"/".join(FSDP_LAYER_CLASSES)}, full-state-dict checkpoints)']
