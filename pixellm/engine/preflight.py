"""Checks ``tools/train.py`` and ``tools/test.py`` run before the runner is built.

mmengine's ``Runner`` creates the work dir, its log folder and the environment/config dump
before it builds the model, and loads ``load_from`` / ``--resume`` checkpoints only when training
or testing starts. A mistake found there ends a run that has already written into the work dir
and printed hundreds of lines. These checks find the common mistakes first, from the config
alone:

* :func:`check_config_types`: every ``type`` the config names resolves in its registry, and the
  keyword arguments of the models, datasets, transforms, hooks and metrics it builds are ones
  their classes take;
* :func:`check_run_checkpoints`: the checkpoint a run will load (``load_from``, the one named
  by ``--resume`` or by ``<work_dir>/last_checkpoint``) exists, is a readable torch checkpoint
  and holds only allowed globals (:func:`pixellm.engine.checkpoint.check_checkpoint_file`).

Both raise errors that the tools report as one line (:mod:`pixellm.utils.cli`).
"""
import inspect
import os.path as osp
from typing import Any, Iterator, List, Optional, Tuple

from mmengine.config import Config
from mmengine.registry import Registry

from pixellm.utils.cli import UserError
from .checkpoint import check_checkpoint_file


class ConfigCheckError(UserError):
    """A config names a type no registry knows, or gives a class a keyword it does not take.

    Args:
        reason (str): What is wrong, with the config key.
        filename (str, optional): The config file.
    """


def _registries() -> dict:
    """Section registries of pixellm (children of mmengine's) and the rest of mmengine's."""
    import mmengine.registry as mm

    import pixellm.registry as px
    section = dict(model=px.MODELS, dataset=px.DATASETS, transform=px.TRANSFORMS,
                   sampler=px.DATA_SAMPLERS, metric=px.METRICS, hook=px.HOOKS, loop=px.LOOPS,
                   optim_wrapper=px.OPTIM_WRAPPERS, optimizer=px.OPTIMIZERS,
                   constructor=px.OPTIM_WRAPPER_CONSTRUCTORS,
                   param_scheduler=px.PARAM_SCHEDULERS, visualizer=px.VISUALIZERS,
                   vis_backend=px.VISBACKENDS, log_processor=px.LOG_PROCESSORS,
                   tokenizer=px.TOKENIZERS, text_processor=px.TEXT_PROCESSORS,
                   model_wrapper=px.MODEL_WRAPPERS,
                   evaluator=px.EVALUATOR, runner=px.RUNNERS,
                   weight_initializer=px.WEIGHT_INITIALIZERS)
    others = [getattr(mm, name) for name in ('FUNCTIONS', 'STRATEGIES', 'INFERENCERS',
                                             'TASK_UTILS', 'RUNNER_CONSTRUCTORS')]
    return dict(section=section, all=list(section.values()) + others)


# Sections whose classes get the config's keywords as they are: their keyword arguments are
# checked. (Optimizers, schedulers and wrappers have keys that the runner pops or converts.)
_KWARG_CHECKED = ('model', 'dataset', 'transform', 'hook', 'metric')


def _sections(cfg: Config) -> Iterator[Tuple[str, str, Any]]:
    """``(config key, section, value)`` of every typed part the runner builds."""
    yield 'model', 'model', cfg.get('model')
    yield 'text_processor', 'text_processor', cfg.get('text_processor')
    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if isinstance(loader, dict):
            yield f'{split}_dataloader.dataset', 'dataset', loader.get('dataset')
            yield f'{split}_dataloader.sampler', 'sampler', loader.get('sampler')
        yield f'{split}_cfg', 'loop', cfg.get(f'{split}_cfg')
    for split in ('val', 'test'):
        evaluator = cfg.get(f'{split}_evaluator')
        if isinstance(evaluator, dict) and 'metrics' in evaluator:
            yield f'{split}_evaluator', 'evaluator', evaluator
        else:
            yield f'{split}_evaluator', 'metric', evaluator
    for name, hook in dict(cfg.get('default_hooks') or {}).items():
        yield f'default_hooks.{name}', 'hook', hook
    yield 'custom_hooks', 'hook', cfg.get('custom_hooks')
    wrapper = cfg.get('optim_wrapper')
    if isinstance(wrapper, dict):
        yield 'optim_wrapper', 'optim_wrapper', {k: v for k, v in wrapper.items()
                                                 if k not in ('optimizer', 'constructor')}
        yield 'optim_wrapper.optimizer', 'optimizer', wrapper.get('optimizer')
        if isinstance(wrapper.get('constructor'), str):
            yield 'optim_wrapper.constructor', 'constructor', dict(type=wrapper['constructor'])
    yield 'param_scheduler', 'param_scheduler', cfg.get('param_scheduler')
    visualizer = cfg.get('visualizer')
    if isinstance(visualizer, dict):
        yield 'visualizer', 'visualizer', {k: v for k, v in visualizer.items()
                                           if k != 'vis_backends'}
        yield 'visualizer.vis_backends', 'vis_backend', visualizer.get('vis_backends')
    yield 'log_processor', 'log_processor', cfg.get('log_processor')


def _lookup(registry: Registry, name: str, scope: Optional[str]) -> Any:
    registry.import_from_location()
    return registry.get(f'{scope}.{name}' if scope and '.' not in name else name)


def _accepted_keywords(obj: Any) -> Optional[set]:
    """The keyword names ``obj(...)`` takes, or None when it takes any (``**kwargs``)."""
    try:
        signature = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    except (TypeError, ValueError):
        return None
    names = set()
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          inspect.Parameter.KEYWORD_ONLY):
            names.add(param.name)
    return names


# Keys under which a nested part belongs to another registry than its parent's.
_NESTED_SECTIONS = dict(pipeline='transform', transforms='transform', tokenizer='tokenizer',
                        text_processor='text_processor', codebook='model', dataset='dataset',
                        datasets='dataset')


def _walk(value: Any, key: str, section: str) -> Iterator[Tuple[str, str, dict, bool]]:
    """``(key, section, dict, top)`` of every dict with a ``type`` under ``value``. ``top``
    marks a section's own dicts (the value itself, the items of a list value, and what sits
    under a key of :data:`_NESTED_SECTIONS`), which must resolve in the section's registry."""
    def visit(node: Any, path: str, section: str,
              top: bool) -> Iterator[Tuple[str, str, dict, bool]]:
        if isinstance(node, dict):
            if 'type' in node:
                yield path, section, node, top
            for name, child in node.items():
                child_section = _NESTED_SECTIONS.get(name)
                yield from visit(child, f'{path}.{name}', child_section or section,
                                 child_section is not None)
        elif isinstance(node, (list, tuple)):
            for index, child in enumerate(node):
                yield from visit(child, f'{path}[{index}]', section, top)
    yield from visit(value, key, section, True)


def check_config_types(cfg: Config, config_file: Optional[str] = None) -> None:
    """Check the ``type`` s and keyword arguments of a config before anything is built.

    The typed parts the runner builds (model, datasets with their pipelines, samplers, loops,
    metrics, hooks, optimizer wrapper and optimizer, schedulers, visualizer) are looked up in
    their registries; a ``type`` nested deeper (a model's components, a pipeline's transforms,
    a tokenizer) must resolve in the section's registry or in any other pixellm/mmengine
    registry. For the classes of models, datasets, transforms, hooks and metrics found in their
    own registry, every key of the config dict must be a parameter of the class (unless it takes
    ``**kwargs``). ``type`` s given as classes (lazy configs) are not looked up.

    Args:
        cfg (Config): The full config, after ``--cfg-options``.
        config_file (str, optional): The config file, named in the error. Defaults to
            ``cfg.filename``.

    Raises:
        ConfigCheckError: A ``type`` resolves nowhere, or a keyword is not accepted; the message
            gives the config key, the registry and the closest names or the accepted keywords.
    """
    from pixellm.registry import unknown_type_message
    config_file = config_file or getattr(cfg, 'filename', None)
    registries = _registries()
    for key, section, value in _sections(cfg):
        if value is None:
            continue
        for path, node_section, node, top in _walk(value, key, section):
            obj_type = node['type']
            if not isinstance(obj_type, str):
                continue
            own = registries['section'][node_section]
            scope = node.get('_scope_')
            found, found_in = _lookup(own, obj_type, scope), own
            if found is None and not top:
                for registry in registries['all']:
                    found, found_in = _lookup(registry, obj_type, scope), registry
                    if found is not None:
                        break
            if found is None:
                raise ConfigCheckError(f'{path}.type: {unknown_type_message(own, obj_type)}',
                                       config_file)
            if not any(found_in is registries['section'][name] for name in _KWARG_CHECKED):
                continue
            accepted = _accepted_keywords(found)
            if accepted is None:
                continue
            unknown = sorted(k for k in node if k not in ('type', '_scope_') and k not in accepted)
            if unknown:
                name = getattr(found, '__name__', obj_type)
                raise ConfigCheckError(
                    f'{path}: {name} got unexpected keyword argument(s) '
                    f'{", ".join(map(repr, unknown))}; it takes '
                    f'{", ".join(sorted(accepted - {"self"})) or "none"}', config_file)


def _is_remote(path: str) -> bool:
    return '://' in path


def run_checkpoint(cfg: Config) -> Optional[str]:
    """The local checkpoint file a run of ``cfg`` will load, as mmengine will choose it.

    Args:
        cfg (Config): The full config (``load_from``, ``resume``, ``work_dir``).

    Returns:
        str | None: ``load_from``; with ``resume`` and no ``load_from``, the file that
        ``<work_dir>/last_checkpoint`` names; None when nothing is loaded, for remote URLs, and
        for DeepSpeed runs (whose checkpoints are folders).
    """
    strategy = cfg.get('strategy')
    if isinstance(strategy, dict) and 'DeepSpeed' in str(strategy.get('type')):
        return None
    load_from = cfg.get('load_from')
    if load_from:
        return None if _is_remote(str(load_from)) else str(load_from)
    if cfg.get('resume') and cfg.get('work_dir'):
        pointer = osp.join(cfg.work_dir, 'last_checkpoint')
        if osp.isfile(pointer):
            with open(pointer) as f:
                named = f.read().strip()
            if named and not _is_remote(named):
                return named
    return None


def check_run_checkpoints(cfg: Config) -> List[str]:
    """Check the checkpoint a run will load (:func:`run_checkpoint`) without loading it.

    Args:
        cfg (Config): The full config.

    Returns:
        list[str]: The checked files (empty when the run loads none).

    Raises:
        FileNotFoundError: The checkpoint does not exist.
        BadCheckpointError: It is empty, truncated, corrupt or not a torch checkpoint.
        UntrustedCheckpointError: It holds globals outside the allow-list (and the checkpoint
            was not trusted with ``--trust-checkpoint``).
    """
    path = run_checkpoint(cfg)
    if path is None:
        return []
    check_checkpoint_file(path)
    return [path]


__all__ = ['ConfigCheckError', 'check_config_types', 'check_run_checkpoints', 'run_checkpoint']
