"""Registries of pixellm: children of mmengine's roots, resolved under ``default_scope='pixellm'``.

Every component kind (vision encoders, LLM backbones, projectors, codebooks, pixel decoders, losses,
models, datasets, transforms, metrics, hooks, tokenizers, text processors, runner strategies) is built from a config
``dict(type=...)`` through one of these registries. ``locations`` lets mmengine import the modules
that register the classes on first use, so a config never needs a manual import.

An unknown ``type`` raises a ``KeyError`` that names the registry, the scope and the closest
registered names, instead of mmengine's bare "not in the registry" message.
"""
import difflib
from typing import Any, List

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry, build_from_cfg

SCOPE = 'pixellm'


def _registered_names(registry: Registry) -> List[str]:
    """Names visible from ``registry``: its own, its children's and its ancestors'."""
    names = set(registry.module_dict)
    for child in registry.children.values():
        names.update(child.module_dict)
    parent = registry.parent
    while parent is not None:
        names.update(parent.module_dict)
        parent = parent.parent
    return sorted(names)


def unknown_type_message(registry: Registry, type_name: str) -> str:
    """The text of the error raised for a ``type`` that ``registry`` cannot resolve."""
    registry.import_from_location()
    names = _registered_names(registry)
    short = type_name.split('.')[-1]
    close = difflib.get_close_matches(short, names, n=5, cutoff=0.5)
    if not close:
        close = [n for n in names if short.lower() in n.lower() or n.lower() in short.lower()][:5]
    hint = (f' Closest registered names: {", ".join(close)}.' if close else
            f' Registered names include: {", ".join(names[:12])}.')
    return (f'{type_name!r} is not registered in the {registry.name!r} registry '
            f'(scope {registry.scope!r}).{hint} If it comes from a plugin, list its module in '
            f'the config\'s custom_imports.')


def _check_type(cfg: Any, registry: Registry) -> None:
    if isinstance(cfg, dict) and isinstance(cfg.get('type'), str):
        registry.import_from_location()
        if registry.get(cfg['type']) is None:
            raise KeyError(unknown_type_message(registry, cfg['type']))


def build_with_hint(cfg: Any, registry: Registry, default_args: Any = None) -> Any:
    """``build_from_cfg`` that turns an unresolvable ``type`` into a helpful ``KeyError``."""
    _check_type(cfg, registry)
    return build_from_cfg(cfg, registry, default_args)


def _child(name: str, parent: Registry, location: str) -> Registry:
    return Registry(name, parent=parent, scope=SCOPE, build_func=build_with_hint,
                    locations=[location])


def _model_build(cfg: Any, registry: Registry, default_args: Any = None) -> Any:
    # mmengine's model registry builds a list of dicts as nn.Sequential; keep that behaviour.
    from mmengine.registry import build_model_from_cfg
    if not isinstance(cfg, list):
        _check_type(cfg, registry)
    return build_model_from_cfg(cfg, registry, default_args)


# Models and every model component kind (vision encoders, LLM backbones, projectors, codebooks,
# pixel decoders, losses, data preprocessors) share one registry, as in mmseg/mmdet.
MODELS = Registry('model', parent=MMENGINE_MODELS, scope=SCOPE, build_func=_model_build,
                  locations=['pixellm.models'])
MODEL_WRAPPERS = _child('model wrapper', MMENGINE_MODEL_WRAPPERS, 'pixellm.models')
WEIGHT_INITIALIZERS = _child('weight initializer', MMENGINE_WEIGHT_INITIALIZERS, 'pixellm.models')
# The text side shared by a model and its data pipelines: tokenizer builders, and the text
# processor (tokenizer + codebook tokens + chat template) built from a config's `text_processor`.
TOKENIZERS = Registry('tokenizer', scope=SCOPE, build_func=build_with_hint,
                      locations=['pixellm.text.tokenizers'])
TEXT_PROCESSORS = Registry('text processor', scope=SCOPE, build_func=build_with_hint,
                           locations=['pixellm.text'])

DATASETS = _child('dataset', MMENGINE_DATASETS, 'pixellm.datasets')
DATA_SAMPLERS = _child('data sampler', MMENGINE_DATA_SAMPLERS, 'pixellm.datasets')
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS, 'pixellm.datasets')

METRICS = _child('metric', MMENGINE_METRICS, 'pixellm.evaluation')
EVALUATOR = _child('evaluator', MMENGINE_EVALUATOR, 'pixellm.evaluation')

HOOKS = _child('hook', MMENGINE_HOOKS, 'pixellm.engine')
LOOPS = _child('loop', MMENGINE_LOOPS, 'pixellm.engine')
RUNNERS = _child('runner', MMENGINE_RUNNERS, 'pixellm.engine')
# FlexibleRunner builds its strategy before it sets the config's default_scope: a pixellm
# strategy is named with _scope_='pixellm' unless that scope is already current.
STRATEGIES = _child('strategy', MMENGINE_STRATEGIES, 'pixellm.engine')
LOG_PROCESSORS = _child('log processor', MMENGINE_LOG_PROCESSORS, 'pixellm.engine')
OPTIMIZERS = _child('optimizer', MMENGINE_OPTIMIZERS, 'pixellm.engine')
OPTIM_WRAPPERS = _child('optim wrapper', MMENGINE_OPTIM_WRAPPERS, 'pixellm.engine')
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, 'pixellm.engine')
PARAM_SCHEDULERS = _child('parameter scheduler', MMENGINE_PARAM_SCHEDULERS, 'pixellm.engine')

VISUALIZERS = _child('visualizer', MMENGINE_VISUALIZERS, 'pixellm.visualization')
VISBACKENDS = _child('vis_backend', MMENGINE_VISBACKENDS, 'pixellm.engine')
