"""``--fsdp``: PyTorch FSDP through ``FlexibleRunner``, one unit per transformer block, the block
classes being those the model's components declare."""
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from mmengine.config import Config

from .tool_config import type_name

FSDP_WRAP_POLICY = 'pixellm_layer_wrap_policy'


def layer_wrap_policy(module: torch.nn.Module, recurse: bool, nonwrapped_numel: int, *,
                      layer_classes: Sequence[str]) -> bool:
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


def _typed_dicts(node: Any, path: str) -> Iterator[Tuple[str, dict]]:
    """``(config key, dict)`` of ``node`` and of every dict with a ``type`` nested in it."""
    if isinstance(node, dict):
        if 'type' in node:
            yield path, node
        for key, child in node.items():
            yield from _typed_dicts(child, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, child in enumerate(node):
            yield from _typed_dicts(child, f'{path}[{index}]')


def _model_class(obj_type: Any) -> Optional[type]:
    """The class a ``type`` names in pixellm's ``MODELS`` (None for other registries' types)."""
    if isinstance(obj_type, type):
        return obj_type
    if not isinstance(obj_type, str):
        return None
    from pixellm.registry import MODELS
    MODELS.import_from_location()
    return MODELS.get(obj_type)


def declared_block_classes(model_cfg: Any,
                           path: str = 'model') -> List[Tuple[str, str, Tuple[str, ...]]]:
    """The transformer block classes the components of a model config declare for FSDP.

    A component declares its blocks with a classmethod ``fsdp_block_classes(cfg)`` that returns
    their class names from the component's config dict, without building anything (see
    ``HFCausalLM`` and ``CLIPVisionEncoder``). The model and every dict with a ``type`` nested
    in it (``model.llm``, ``model.vision_encoder``...) are looked up in pixellm's ``MODELS``; a
    class without the method, or a ``type`` of another registry, declares nothing.

    Args:
        model_cfg (dict): ``cfg.model``.
        path (str): The config key of ``model_cfg``, for the result. Defaults to ``'model'``.

    Returns:
        list[tuple[str, str, tuple[str]]]: ``(config key, class name, block class names)`` of
        each component that declares at least one block, in config order.
    """
    declared = []
    for key, node in _typed_dicts(model_cfg, path):
        cls = _model_class(node['type'])
        declare = getattr(cls, 'fsdp_block_classes', None)
        if declare is None:
            continue
        blocks = tuple(declare(node))
        if blocks:
            declared.append((key, cls.__name__, blocks))
    return declared


def apply_fsdp(cfg: Config) -> List[str]:
    """Train with PyTorch FSDP (``--fsdp``): ``FlexibleRunner`` + mmengine's ``FSDPStrategy``.

    Parameters, gradients and optimizer states are sharded over the ranks (``FULL_SHARD``), one
    unit per transformer block plus the rest of the model at the root. The block classes are
    those the model's components declare (:func:`declared_block_classes`: the LLM's decoder
    layer, ``CLIPEncoderLayer``...), so a new LLM or encoder brings its own. ``use_orig_params``
    keeps frozen weights, LoRA and the trainable token rows side by side in one unit.
    Checkpoints hold the full state dict (rank 0 writes an ordinary ``.pth`` that
    ``tools/test.py`` loads). The optimizer wrapper of the config stays: ``OptimWrapper``, or
    ``AmpOptimWrapper`` (bf16 autocast) on GPUs.
    Generation during validation runs in step across ranks (``PixelLM.sync_ranks``).

    Args:
        cfg (Config): The config after the command-line overrides, edited in place.

    Returns:
        list[str]: One line per change, for the log.

    Raises:
        ValueError: No launcher, the config already chose another runner strategy, or no
            component of the model declares a block class.
    """
    if cfg.get('launcher', 'none') == 'none':
        raise ValueError('--fsdp needs a distributed launcher: run tools/dist_train.sh CONFIG '
                         'GPUS --fsdp, or torchrun ... tools/train.py --launcher pytorch --fsdp.')
    if cfg.get('strategy') and type_name(cfg.strategy.get('type')) != 'FSDPStrategy':
        raise ValueError(f'--fsdp: the config already sets strategy '
                         f'{type_name(cfg.strategy.get("type"))}; use one of them.')
    declared = declared_block_classes(cfg.get('model'))
    if not declared:
        components = ', '.join(f'{type_name(node["type"])} ({key})'
                               for key, node in _typed_dicts(cfg.get('model'), 'model'))
        raise ValueError(
            f'--fsdp: no component of the model declares the transformer blocks FSDP should '
            f'wrap one by one (components: {components or "none"}). '
            'Give the LLM or vision-encoder class a classmethod fsdp_block_classes(cfg) that '
            'returns their class names, as HFCausalLM and CLIPVisionEncoder do.')
    layer_classes = list(dict.fromkeys(block for _, _, blocks in declared for block in blocks))
    wrapper = dict(type='MMFullyShardedDataParallel', _scope_='mmengine',
                   sharding_strategy='FULL_SHARD', use_orig_params=True,
                   auto_wrap_policy=dict(type=FSDP_WRAP_POLICY, layer_classes=layer_classes))
    cfg.runner_type = 'FlexibleRunner'
    cfg.strategy = dict(type='FSDPStrategy', _scope_='mmengine', model_wrapper=wrapper,
                        state_dict_cfg='full')
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict(dist_cfg=dict(backend='nccl'))
    sources = ', '.join(f'{name} ({key})' for key, name, _ in declared)
    return [f'runner: FlexibleRunner with FSDPStrategy (FULL_SHARD, one unit per '
            f'{"/".join(layer_classes)}, full-state-dict checkpoints); blocks declared by '
            f'{sources}']
