"""Hand a config's one ``text_processor`` to its model and to every pipeline step that takes one."""
import inspect
from typing import Any, Iterator, List, Optional

from .processor import plain_config

LOADER_KEYS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


class TextProcessorConflict(ValueError):
    """Two parts of a config give different text processors."""


def _takes_text_processor(registry, type_name: Any) -> bool:
    cls = registry.get(type_name) if isinstance(type_name, str) else type_name
    if not inspect.isclass(cls) and not callable(cls):
        return False
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    if 'text_processor' in params:
        return True
    # A subclass passing ``**kwargs`` on to its base (LISA to PixelLM) takes what the base takes.
    if not inspect.isclass(cls) or not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return False
    for klass in cls.__mro__[1:]:
        if '__init__' not in vars(klass):
            continue
        try:
            params = inspect.signature(vars(klass)['__init__']).parameters
        except (TypeError, ValueError):
            return False
        if 'text_processor' in params:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
    return False


def _pipelines(node: Any) -> Iterator[list]:
    """Every ``pipeline`` list inside a dataloader config (nested and mixed datasets too)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'pipeline' and isinstance(value, list):
                yield value
            else:
                yield from _pipelines(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _pipelines(value)


def share_text_processor(cfg) -> Optional[List[str]]:
    """Put the config's ``text_processor`` into ``model`` and into every pipeline step taking one.

    The source is the top-level ``text_processor`` key, or else ``model.text_processor``.
    Steps and a model that already name a processor must name the same one: a different one
    raises, since a model and a pipeline that disagree train or score the wrong ids silently.

    Args:
        cfg (Config | dict): The loaded config; edited in place.

    Returns:
        list[str] | None: Where the processor was put (``'model'``, ``'test_dataloader'``...),
        or None when the config has no text processor.

    Raises:
        TextProcessorConflict: A model or step names another processor.
    """
    from pixellm.registry import MODELS, TRANSFORMS
    model = cfg.get('model')
    source = cfg.get('text_processor')
    if source is None and isinstance(model, dict):
        source = model.get('text_processor')
    if source is None:
        return None
    placed = []
    if isinstance(model, dict) and _takes_text_processor(MODELS, model.get('type')):
        if model.get('text_processor') is not None and \
                plain_config(model['text_processor']) != plain_config(source):
            raise TextProcessorConflict(
                'model.text_processor differs from the config\'s text_processor; set the '
                'tokenizer, codebook and chat template once, in the top-level text_processor '
                'key, which the model and the pipelines share')
        model['text_processor'] = source
        placed.append('model')
    for key in LOADER_KEYS:
        loader = cfg.get(key)
        if not isinstance(loader, dict):
            continue
        for pipeline in _pipelines(loader):
            for step in pipeline:
                if not isinstance(step, dict) or not _takes_text_processor(TRANSFORMS,
                                                                          step.get('type')):
                    continue
                if step.get('text_processor') is not None and \
                        plain_config(step['text_processor']) != plain_config(source):
                    raise TextProcessorConflict(
                        f'a {step["type"]} step of {key} names its own text_processor, which '
                        'differs from the config\'s; drop it from the step: the step gets the '
                        'config\'s text_processor, the one the model uses')
                step['text_processor'] = source
                if key not in placed:
                    placed.append(key)
    return placed
