"""Load a config the way the tools do: plugin imports honoured for pure-Python configs too.

Facts about ``mmengine.Config.fromfile`` in mmengine 0.10.7 (checked by experiment):

* A file is parsed "lazily" (new-style pure-Python config) when ``Config._is_lazy_import`` finds,
  walking the AST breadth-first, a ``with`` statement (which must be ``with read_base():``, any
  other context manager raises ``ConfigParsingError``), a relative import, or an import of a
  module it does not classify as standard library, before any ``_base_ = ...`` assignment. So
  every config with ``with read_base():`` is lazy.
* Lazy configs never import ``custom_imports``: only the non-lazy branch of ``fromfile`` calls
  ``import_modules_from_strings``. :func:`load_config` imports them for both kinds.
* The "standard library" test (``mmengine.config.utils._is_builtin_module``) accepts a module only
  if it is compiled in or its file lies under ``dirname(dirname(sys.executable))`` or
  ``/usr/lib/python``. ``os`` is a frozen module from Python 3.11 on (``origin == 'frozen'``), so
  ``import os`` alone makes any config lazy; inside a virtualenv whose base interpreter lives
  elsewhere (pyenv, conda, uv) every stdlib module (``math``, ``json``, ``collections``) is
  misclassified the same way.
* In a lazy config such imports become ``LazyObject``s. Reading them is fine, but *calling*
  anything imported (``os.path.join(...)``, ``math.ceil(...)``, ``torch.zeros(...)``) at config
  level raises a bare ``RuntimeError()`` from ``mmengine/config/lazy.py``. :func:`load_config`
  turns that into a :class:`ConfigLoadError` naming the file and line. Even a correctly
  classified stdlib import leaves a module object in a lazy config, which makes
  ``Config.pretty_text``/``dump`` fail. Our configs therefore import no modules to call them;
  derived values use plain expressions (arithmetic, f-strings, comprehensions, ``dict.update``),
  which work in lazy configs, and classes imported for ``type=`` (``from torch.optim import
  AdamW``) work because they are only referenced, never called.
* A lazy config may inherit an installed package's config by an absolute import, ``with
  read_base(): from pixellm.configs.pixellm.pixellm_tiny_muse import *``. mmengine finds its file
  with ``mmengine.config.config.get_installed_path``, which needs ``pkg_resources`` (gone from
  current setuptools) and, for an editable install, names a folder that does not exist. While
  :func:`load_config` parses a file it resolves a package that Python can import to the folder
  Python imports it from (:func:`package_folders`); other packages go to mmengine as before.
  A plain config (``_base_ = [...]``) cannot inherit a lazy one (mmengine refuses to mix the two
  styles), so a plugin's config that starts from a shipped one is a lazy config.
* A plain config (``_base_ = [...]``, no imports) is not lazy; mmengine imports its
  ``custom_imports`` inside ``fromfile`` with the ``sys.path`` of the moment, so a plugin next to
  the config is not found unless ``PYTHONPATH`` is set. :func:`load_config` puts the config's
  directory and its project root on ``sys.path`` first and imports the plugins itself.
"""
import contextlib
import errno
import importlib.util
import os
import os.path as osp
import sys
import traceback
from typing import Iterator, List, Optional, Sequence, Union

from mmengine.config import Config
from mmengine.config.utils import ConfigParsingError
from mmengine.utils import import_modules_from_strings

# Files whose presence marks a project root, where packages such as ``plugins.xxx`` live.
PROJECT_ROOT_MARKERS = ('setup.py', 'pyproject.toml', 'setup.cfg', '.git')


class ConfigLoadError(ConfigParsingError):
    """A config file could not be loaded; the message names the file and, if known, the line."""


def pixellm_repo_root() -> str:
    """The directory that holds the ``pixellm`` package (the repository root in a checkout).

    Returns:
        str: Absolute path.
    """
    import pixellm
    return osp.dirname(osp.dirname(osp.abspath(pixellm.__file__)))


def find_project_root(path: str) -> Optional[str]:
    """The closest ancestor directory of ``path`` that holds a project marker file.

    Args:
        path (str): A file or directory.

    Returns:
        str | None: The directory, or ``None`` if no ancestor has a marker.
    """
    current = osp.abspath(path if osp.isdir(path) else osp.dirname(path))
    while True:
        if any(osp.exists(osp.join(current, marker)) for marker in PROJECT_ROOT_MARKERS):
            return current
        parent = osp.dirname(current)
        if parent == current:
            return None
        current = parent


def config_import_paths(config_path: str) -> List[str]:
    """Directories put on ``sys.path`` for a config: its own, its project root, pixellm's root.

    Args:
        config_path (str): The config file.

    Returns:
        list[str]: Absolute, de-duplicated directories, highest priority first.
    """
    paths = [osp.dirname(osp.abspath(config_path)), find_project_root(config_path),
             pixellm_repo_root()]
    unique: List[str] = []
    for path in paths:
        if path and path not in unique:
            unique.append(path)
    return unique


def add_import_paths(paths: Sequence[str]) -> None:
    """Put ``paths`` at the front of ``sys.path`` (in the given order), skipping present ones.

    Args:
        paths (Sequence[str]): Directories, highest priority first.
    """
    for path in reversed(list(paths)):
        if path not in sys.path:
            sys.path.insert(0, path)


def import_custom_modules(cfg: Config, config_path: Optional[str] = None) -> List[str]:
    """Import ``cfg.custom_imports['imports']``, honouring ``allow_failed_imports``.

    Args:
        cfg (Config): The loaded config.
        config_path (str, optional): Its file, for error messages. Defaults to ``cfg.filename``.

    Returns:
        list[str]: The module names that were requested.

    Raises:
        ImportError: A module failed to import and ``allow_failed_imports`` is not set; the
            message names the config, the module and ``sys.path``.
    """
    custom = cfg.get('custom_imports')
    if not custom:
        return []
    imports = custom.get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    allow_failed = bool(custom.get('allow_failed_imports', False))
    try:
        import_modules_from_strings(imports, allow_failed_imports=allow_failed)
    except ImportError as err:
        source = config_path or cfg.filename
        searched = '\n    '.join(sys.path)
        raise ImportError(
            f'{source}: custom_imports could not import {imports} ({err}). Set '
            "custom_imports['allow_failed_imports']=True to skip it, or put its directory on "
            f'PYTHONPATH. sys.path is:\n    {searched}') from err
    return imports


def _lazy_call_error(config_path: str, err: RuntimeError) -> Optional[ConfigLoadError]:
    """A readable error for mmengine's bare RuntimeError from calling a LazyObject."""
    frames = traceback.extract_tb(err.__traceback__)
    last = frames[-1].filename.replace(os.sep, '/') if frames else ''
    if not last.endswith('mmengine/config/lazy.py'):
        return None
    # The last frame outside mmengine is the config line that made the call.
    culprit = next((f for f in reversed(frames) if f.filename.endswith('.py')
                    and '/mmengine/' not in f.filename.replace(os.sep, '/')), None)
    where = (f'{culprit.filename}, line {culprit.lineno}: {culprit.line}' if culprit
             else config_path)
    return ConfigLoadError(
        f'{where}\nThis config is parsed lazily by mmengine 0.10.7 (it uses `with read_base()`, a '
        'relative import, or imports a module mmengine does not recognise as standard library - '
        'on Python >= 3.11 that includes `os`), so imported names are LazyObjects and calling one '
        'at config level fails. Compute the value with plain Python (arithmetic, f-strings, '
        'string concatenation) or do the call in code; see pixellm/utils/config.py.')


@contextlib.contextmanager
def package_folders() -> Iterator[None]:
    """Let mmengine find an importable package's configs while the block runs.

    Replaces ``mmengine.config.config.get_installed_path`` (the function mmengine 0.10.7 calls for
    an absolute ``read_base`` import) by one that returns the folder Python imports the package
    from, falling back to mmengine's for a package Python cannot find. The original is put back
    when the block ends.

    Yields:
        None
    """
    from mmengine.config import config as mmengine_config
    original = mmengine_config.get_installed_path

    def installed_path(package: str) -> str:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            return list(spec.submodule_search_locations)[0]
        return original(package)

    mmengine_config.get_installed_path = installed_path
    try:
        yield
    finally:
        mmengine_config.get_installed_path = original


def load_config(path: Union[str, os.PathLike], cfg_options: Optional[dict] = None,
                import_plugins: bool = True) -> Config:
    """Load a config file, merge overrides, import its ``custom_imports`` plugins and hand its
    ``text_processor`` to the model and the pipelines (:func:`share_text_processor`).

    Works the same for lazy (``with read_base()``) and plain configs. Before parsing, the
    config's directory, its project root and pixellm's root are put on ``sys.path`` so that
    plugins next to the config or packages such as ``plugins.xxx`` import.

    Args:
        path (str | PathLike): The config file.
        cfg_options (dict, optional): ``--cfg-options`` overrides, merged with
            ``Config.merge_from_dict``. Defaults to None.
        import_plugins (bool): Import ``custom_imports``. Defaults to True.

    Returns:
        Config: The config.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigLoadError: The config is not valid Python, or calls a lazily imported function at
            config level.
        ImportError: A plugin failed to import (see :func:`import_custom_modules`).
    """
    path = osp.abspath(os.fspath(path))
    if not osp.isfile(path):
        raise FileNotFoundError(errno.ENOENT, 'config file does not exist', path)
    add_import_paths(config_import_paths(path))
    try:
        # Plugins are imported below for both config kinds, with one error message.
        with package_folders():
            cfg = Config.fromfile(path, import_custom_modules=False)
    except SyntaxError as err:
        where = '' if path in str(err) else f'{path}: '
        raise ConfigLoadError(f'{where}invalid Python syntax: {err}') from err
    except RuntimeError as err:
        readable = _lazy_call_error(path, err)
        if readable is None:
            raise
        raise readable from err
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if import_plugins:
        import_custom_modules(cfg, path)
    from pixellm.text.sharing import share_text_processor
    share_text_processor(cfg)
    return cfg
