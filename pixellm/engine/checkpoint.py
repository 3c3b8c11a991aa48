"""Checkpoint I/O that survives torch >= 2.6 and crashes: allow-listed loading and atomic writes.

Facts about mmengine 0.10.7 under torch >= 2.6 that this module works around:

* ``torch.load`` defaults to ``weights_only=True`` since torch 2.6. mmengine reads every local
  checkpoint through ``mmengine.runner.checkpoint.load_from_local`` (the ``''`` scheme of
  ``CheckpointLoader``), which calls ``torch.load(filename, map_location=...)`` without
  ``weights_only``. ``Runner.resume``, ``Runner.load_checkpoint``, ``load_checkpoint`` and
  ``CheckpointHook._publish_model`` all end there, and all fail on mmengine's own checkpoints with
  ``Unsupported global: GLOBAL mmengine.logging.history_buffer.HistoryBuffer``. The globals such a
  checkpoint holds (found by saving one and listing them with
  ``torch.serialization.get_unsafe_globals_in_checkpoint``) are ``HistoryBuffer`` (message hub
  scalars), ``numpy.ndarray``, ``numpy.dtype`` with its per-type ``numpy.dtypes.*DType`` class,
  ``numpy._core.multiarray._reconstruct`` and ``numpy._core.multiarray.scalar`` (numpy arrays and
  scalars in the message hub and the dataset meta), and ``builtins.getattr``:
  ``HistoryBuffer.__getstate__`` pickles its statistics methods as
  ``getattr(HistoryBuffer, 'min')``.
* Allowing ``builtins.getattr`` outright would let a file reach any attribute of any allowed
  object, so it is mapped to :func:`_history_buffer_getattr`, which only returns functions defined
  on ``HistoryBuffer``.
* Checkpoints written under numpy 1.x name ``numpy.core.multiarray``; the numpy 2 names are
  ``numpy._core.multiarray``. Both spellings are allowed.
* ``OneCycleParamScheduler`` keeps a bound method in its state, which pickles the scheduler object
  itself; such checkpoints are refused and need ``trusted=True`` (or ``--trust-checkpoint``).

:func:`pixellm.engine.mmengine_fixes.install_safe_checkpoint_loader` (installed by every tool's
``build_runner``) makes the ``''`` (local file) scheme of mmengine's ``CheckpointLoader`` this
module's :func:`load_checkpoint_safely`; ``http(s)://``, ``torchvision://`` and ``open-mmlab://``
keep mmengine's loaders, whose pretrained weights are plain state dicts that ``weights_only=True``
accepts.

Writes: mmengine's ``LocalBackend.put`` opens the final checkpoint path with ``'wb'`` and writes
into it, and ``CheckpointHook`` writes ``last_checkpoint`` the same way, so a kill during either
leaves a truncated file. :class:`AtomicLocalBackend` (registered as ``'pixellm_atomic_local'``)
writes to a temporary file in the same directory, fsyncs it and ``os.replace``-s it over the
target; ``AtomicCheckpointHook`` routes mmengine's checkpoint writes through it.
"""
import contextlib
import errno
import io
import os
import os.path as osp
import pickle
import pickletools
import struct
import tempfile
import zipfile
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import HistoryBuffer

ATOMIC_BACKEND_NAME = 'pixellm_atomic_local'
# Prefix of the temporary files that atomic writes leave behind only if the process is killed.
TMP_PREFIX = '.tmp-'

MapLocation = Union[str, torch.device, Callable, dict, None]
SafeGlobal = Union[Any, Tuple[Any, str]]

# HistoryBuffer registers these in its first __init__, which a fresh process may not have run.
_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')

_TRUST_ALL_CHECKPOINTS = False
_EXTRA_SAFE_GLOBALS: List[SafeGlobal] = []


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds pickled objects outside the allow-list, so it was not unpickled.

    Args:
        filename (str): The checkpoint file.
        unsafe_globals (list[str]): Fully qualified names of the refused globals.
        detail (str): The unpickler's own message.

    Attributes:
        filename (str): The checkpoint file.
        unsafe_globals (list[str]): The refused globals.
        reason (str): The message without the file name, for one-line reports
            (:mod:`pixellm.utils.cli`).
    """

    def __init__(self, filename: str, unsafe_globals: Sequence[str], detail: str = '') -> None:
        self.filename = filename
        self.unsafe_globals = list(unsafe_globals)
        names = ', '.join(self.unsafe_globals) or '(see the unpickler message below)'
        reason = (
            f'it contains {names}, which is not on '
            'the allow-list of types that mmengine writes into checkpoints. Unpickling it could '
            'run arbitrary code. If you trust this file, pass --trust-checkpoint to '
            'tools/train.py or tools/test.py, or call '
            'pixellm.engine.load_checkpoint_safely(path, trusted=True); to allow only these '
            'types, call pixellm.engine.allow_checkpoint_globals(<the classes>) before loading.')
        if detail:
            reason += f'\nUnpickler message: {detail}'
        self.reason = 'refusing to unpickle the checkpoint: ' + reason
        super().__init__(f'Refusing to unpickle checkpoint {filename!r}: {reason}')


class BadCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: empty, truncated, corrupt or not a torch checkpoint.

    Args:
        filename (str): The checkpoint file.
        reason (str): What is wrong with it, e.g. ``'is empty (0 bytes)'``.

    Attributes:
        filename (str): The checkpoint file.
        reason (str): The message without the file name, for one-line reports
            (:mod:`pixellm.utils.cli`).
    """

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = filename
        self.reason = f'checkpoint {reason}'
        super().__init__(f'Checkpoint {filename!r} {reason}')


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to the statistics methods that ``HistoryBuffer`` pickles.

    Args:
        obj (Any): The object the pickle asks an attribute of; must be ``HistoryBuffer``.
        name (str): The attribute name.

    Returns:
        Callable: The plain function ``HistoryBuffer.<name>``.

    Raises:
        pickle.UnpicklingError: For any other object or a non-function attribute.
    """
    # Only methods defined on the class that serve as statistics; custom statistics registered
    # with HistoryBuffer.register_statistics are module-level functions and pickle without getattr.
    statistics = set(_DEFAULT_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and isinstance(name, str) and name in statistics:
        value = HistoryBuffer.__dict__.get(name)
        if callable(value) and getattr(value, '__qualname__', '') == f'HistoryBuffer.{name}':
            return value
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint: only statistics methods of '
        'mmengine.logging.HistoryBuffer may be fetched with getattr.')


def _numpy_dtype_classes() -> List[type]:
    # BUILD on a numpy dtype instance requires its concrete class (e.g. Float64DType) to be allowed.
    # Object and void (structured) dtypes are left out: they carry arbitrary pickled payloads.
    names = ('?', 'b', 'B', 'h', 'H', 'i', 'I', 'l', 'L', 'q', 'Q', 'e', 'f', 'd', 'g', 'F', 'D',
             'G', 'S', 'U', 'M8', 'm8')
    classes = []
    for name in names:
        cls = type(np.dtype(name))
        if cls not in classes:
            classes.append(cls)
    return classes


def mmengine_checkpoint_globals() -> List[SafeGlobal]:
    """The globals (beyond torch's defaults) that mmengine 0.10.7 writes into checkpoints.

    Returns:
        list: Objects or ``(object, 'module.name')`` pairs for
        ``torch.serialization.safe_globals``, plus whatever :func:`allow_checkpoint_globals` added.
    """
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    entries: List[SafeGlobal] = [HistoryBuffer, np.ndarray, np.dtype]
    entries += _numpy_dtype_classes()
    # A file records the numpy module path of the writer, so accept both numpy 1 and 2 spellings.
    for package in ('numpy.core', 'numpy._core'):
        entries += [(multiarray._reconstruct, f'{package}.multiarray._reconstruct'),
                    (multiarray.scalar, f'{package}.multiarray.scalar')]
    entries.append((_history_buffer_getattr, 'builtins.getattr'))
    return entries + list(_EXTRA_SAFE_GLOBALS)


def allow_checkpoint_globals(*objects: SafeGlobal) -> None:
    """Add classes or functions that :func:`load_checkpoint_safely` may unpickle, process-wide.

    Use it for a project that stores its own types in checkpoints (e.g. in the dataset meta), so
    that such checkpoints load without trusting arbitrary pickles.

    Args:
        *objects: Classes/functions, or ``(object, 'module.name')`` pairs when the name recorded
            in the file differs from the object's own.
    """
    for obj in objects:
        if obj not in _EXTRA_SAFE_GLOBALS:
            _EXTRA_SAFE_GLOBALS.append(obj)


def set_checkpoint_trust(trusted: bool) -> None:
    """Trust every checkpoint this process loads (``weights_only=False``); ``--trust-checkpoint``.

    Args:
        trusted (bool): ``True`` to unpickle any object; ``False`` restores the allow-list.
    """
    global _TRUST_ALL_CHECKPOINTS
    _TRUST_ALL_CHECKPOINTS = bool(trusted)


def checkpoint_trust_enabled() -> bool:
    """Whether :func:`set_checkpoint_trust` turned off the allow-list for this process.

    Returns:
        bool: The current process-wide trust setting.
    """
    return _TRUST_ALL_CHECKPOINTS


@contextlib.contextmanager
def trusted_checkpoints() -> Iterator[None]:
    """Trust every checkpoint loaded inside the ``with`` block, then restore the previous setting.

    Yields:
        None
    """
    previous = _TRUST_ALL_CHECKPOINTS
    set_checkpoint_trust(True)
    try:
        yield
    finally:
        set_checkpoint_trust(previous)


def load_checkpoint_safely(filename: Union[str, os.PathLike],
                           map_location: MapLocation = 'cpu',
                           trusted: Optional[bool] = None) -> Any:
    """Load a checkpoint written by mmengine with ``weights_only=True`` and an exact allow-list.

    Args:
        filename (str | PathLike): Local checkpoint file (``~`` is expanded).
        map_location (str | torch.device | Callable | dict, optional): As in ``torch.load``.
            Defaults to ``'cpu'``.
        trusted (bool, optional): ``True`` unpickles anything (only for files you trust);
            ``None`` follows :func:`set_checkpoint_trust`. Defaults to None.

    Returns:
        Any: The unpickled checkpoint, usually a dict.

    Raises:
        FileNotFoundError: ``filename`` is not a file.
        UntrustedCheckpointError: The file holds globals outside the allow-list.
        BadCheckpointError: The file is empty, truncated, corrupt or not a torch checkpoint; the
            message names it and says which.
    """
    filename = _existing_file(filename)
    if trusted is None:
        trusted = _TRUST_ALL_CHECKPOINTS
    try:
        if trusted:
            return torch.load(filename, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
            try:
                return torch.load(filename, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as err:
                problem = describe_unreadable_checkpoint(filename)
                if problem is not None:
                    raise BadCheckpointError(filename, problem) from err
                raise _untrusted_error(filename, err) from None
    except (UntrustedCheckpointError, BadCheckpointError):
        raise
    except Exception as err:
        problem = describe_unreadable_checkpoint(filename)
        if problem is None and _is_pickle_file(filename) and isinstance(err, _READ_ERRORS):
            problem = (f'is not a torch checkpoint, or is a truncated one '
                       f'({type(err).__name__}: {err})')
        if problem is None and isinstance(err, RuntimeError) and any(
                text in str(err) for text in ('PytorchStreamReader', 'zip archive')):
            problem = f'is corrupt: {err}'
        if problem is None:
            raise  # e.g. a map_location error: the file itself is fine
        raise BadCheckpointError(filename, problem) from err


def _existing_file(filename: Union[str, os.PathLike]) -> str:
    """``filename`` with ``~`` expanded, after checking it is a file (not a folder)."""
    filename = osp.expanduser(os.fspath(filename))
    if not osp.isfile(filename):
        if osp.isdir(filename):
            raise BadCheckpointError(filename, 'is a folder, not a checkpoint file')
        raise FileNotFoundError(errno.ENOENT, 'checkpoint does not exist', filename)
    return filename


# What torch.load raises on a pickle stream that is cut short or is not a torch checkpoint.
_READ_ERRORS = (EOFError, KeyError, IndexError, ValueError, TypeError, AttributeError,
                struct.error, RuntimeError, OSError)
_ZIP_MAGIC = b'PK'
_PICKLE_PROTO = b'\x80'


def _is_pickle_file(filename: str) -> bool:
    with open(filename, 'rb') as f:
        return f.read(1) == _PICKLE_PROTO


def _is_zip_checkpoint(filename: str) -> bool:
    with open(filename, 'rb') as f:
        return f.read(2) == _ZIP_MAGIC


def describe_unreadable_checkpoint(filename: Union[str, os.PathLike]) -> Optional[str]:
    """What makes a file unreadable as a torch checkpoint, from its size and structure alone.

    Reads the first bytes and, for a zip archive (the format of ``torch.save``), its directory;
    the tensors are not read.

    Args:
        filename (str | PathLike): An existing file.

    Returns:
        str | None: ``'is empty (0 bytes)'``, ``'is truncated: ...'``, ``'is not a torch
        checkpoint: ...'`` or ``'is corrupt: ...'``; None when the file looks like a checkpoint
        (a zip archive with ``data.pkl``, or a pickle stream as older ``torch.save`` wrote).
    """
    filename = os.fspath(filename)
    size = osp.getsize(filename)
    if size == 0:
        return 'is empty (0 bytes)'
    with open(filename, 'rb') as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(filename):
            return (f'is truncated: it starts as a zip archive (the format torch.save writes) '
                    f'but its end is missing ({size} bytes); the write or the copy was cut short')
        try:
            with zipfile.ZipFile(filename) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            return f'is corrupt: its zip directory cannot be read ({err})'
        if not any(name == 'data.pkl' or name.endswith('/data.pkl') for name in names):
            return 'is not a torch checkpoint: a zip archive without data.pkl'
        return None
    if head.startswith(_PICKLE_PROTO):
        return None
    return (f'is not a torch checkpoint: neither a zip archive nor a pickle (it starts with '
            f'{head[:8]!r})')


def check_checkpoint_file(filename: Union[str, os.PathLike],
                          trusted: Optional[bool] = None) -> None:
    """Check that a checkpoint file is readable and holds only allowed globals, without loading it.

    The pre-flight check of the tools: for the zip format of ``torch.save`` only the archive's
    directory and its pickle (``data.pkl``, not the tensors) are read, so it is cheap for a 7B
    checkpoint too; a file in the older pickle format is loaded with
    :func:`load_checkpoint_safely`.

    Args:
        filename (str | PathLike): Local checkpoint file (``~`` is expanded).
        trusted (bool, optional): ``True`` skips the allow-list; ``None`` follows
            :func:`set_checkpoint_trust`. Defaults to None.

    Raises:
        FileNotFoundError: The file does not exist.
        BadCheckpointError: It is a folder, empty, truncated, corrupt or not a torch checkpoint.
        UntrustedCheckpointError: Its pickle names globals outside the allow-list.
    """
    filename = _existing_file(filename)
    problem = describe_unreadable_checkpoint(filename)
    if problem is not None:
        raise BadCheckpointError(filename, problem)
    if trusted is None:
        trusted = _TRUST_ALL_CHECKPOINTS
    if not _is_zip_checkpoint(filename):
        load_checkpoint_safely(filename, map_location='cpu', trusted=trusted)
        return
    if trusted:
        return
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
        except Exception as err:  # an unreadable data.pkl
            raise BadCheckpointError(
                filename, f'is corrupt: its pickle cannot be read ({type(err).__name__}: {err})'
            ) from err
    if unsafe:
        raise UntrustedCheckpointError(filename, sorted(unsafe))


def _untrusted_error(filename: str, err: pickle.UnpicklingError) -> UntrustedCheckpointError:
    detail = str(err)
    # torch prefixes its own advice to set weights_only=False; keep only the unpickler's reason.
    marker = 'WeightsUnpickler error: '
    if marker in detail:
        detail = detail.split(marker, 1)[1].strip().split('\n\n', 1)[0].strip()
        # Drop torch's advice to call add_safe_globals: UntrustedCheckpointError gives ours.
        detail = detail.split(' Please use `torch.serialization.add_safe_globals', 1)[0]
    try:
        # Called inside the safe_globals context, so only the refused names are listed.
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # not a zip archive: a plain pickle stream
        unsafe = _refused_pickle_globals(filename)
    return UntrustedCheckpointError(filename, sorted(unsafe), detail)


def _allowed_global_names() -> set:
    names = set()
    for entry in mmengine_checkpoint_globals():
        if isinstance(entry, tuple):
            names.add(entry[1])
        else:
            names.add(f'{entry.__module__}.{entry.__qualname__}')
    return names


def _refused_pickle_globals(filename: str) -> List[str]:
    """The globals a plain pickle file names that are not on the allow-list, read without
    unpickling (opcodes only; ``STACK_GLOBAL`` takes the two strings pushed before it)."""
    found, strings = [], []
    try:
        with open(filename, 'rb') as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name == 'GLOBAL':
                    found.append(str(arg).replace(' ', '.'))
                elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
                    found.append(f'{strings[-2]}.{strings[-1]}')
                elif isinstance(arg, str) and 'UNICODE' in opcode.name:
                    strings.append(arg)
                if opcode.name == 'STOP':
                    break
    except Exception:  # a damaged stream: report what was read
        pass
    allowed = _allowed_global_names()
    return sorted({name for name in found if name not in allowed})


def _load_from_local(filename: str, map_location: MapLocation = None) -> Any:
    """The ``''`` scheme of mmengine's ``CheckpointLoader``: local files, loaded safely."""
    return load_checkpoint_safely(filename, map_location=map_location)


# mmengine prints the loader's name minus its first 10 characters ("load_from_"): keep the prefix.
_load_from_local.__name__ = 'load_from_local_safely'


def _fsync_dir(dirname: str) -> None:
    # Makes the rename itself durable; directories cannot be opened for fsync on Windows.
    if os.name != 'posix':
        return
    fd = os.open(dirname, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, filepath: Union[str, os.PathLike]) -> None:
    """Write ``data`` so that ``filepath`` is either its old content or all of ``data``.

    The bytes go to a temporary file in the same directory (same filesystem, so the rename is
    atomic), which is fsynced and then ``os.replace``-d over ``filepath``.

    Args:
        data (bytes): The full new content.
        filepath (str | PathLike): The target file; its directory is created if missing.
    """
    filepath = os.fspath(filepath)
    dirname = osp.dirname(osp.abspath(filepath))
    os.makedirs(dirname, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX + osp.basename(filepath) + '.',
                                    dir=dirname)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, filepath)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_dir(dirname)


def atomic_write_text(text: str, filepath: Union[str, os.PathLike],
                      encoding: str = 'utf-8') -> None:
    """:func:`atomic_write_bytes` for text.

    Args:
        text (str): The full new content.
        filepath (str | PathLike): The target file.
        encoding (str): Text encoding. Defaults to ``'utf-8'``.
    """
    atomic_write_bytes(text.encode(encoding), filepath)


def save_checkpoint_atomic(checkpoint: Any, filepath: Union[str, os.PathLike]) -> None:
    """``torch.save`` to a local file through :func:`atomic_write_bytes`.

    Args:
        checkpoint (Any): The object to save.
        filepath (str | PathLike): The target file.
    """
    with io.BytesIO() as buffer:
        torch.save(checkpoint, buffer)
        atomic_write_bytes(buffer.getvalue(), filepath)


def remove_stale_tmp_files(dirname: Union[str, os.PathLike]) -> List[str]:
    """Delete temporary files that atomic writes left in ``dirname`` when a process was killed.

    Args:
        dirname (str | PathLike): The checkpoint directory.

    Returns:
        list[str]: The removed paths.
    """
    dirname = os.fspath(dirname)
    removed = []
    if not osp.isdir(dirname):
        return removed
    for name in sorted(os.listdir(dirname)):
        path = osp.join(dirname, name)
        if name.startswith(TMP_PREFIX) and osp.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


@register_backend(ATOMIC_BACKEND_NAME, force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` replace the target atomically.

    Selected with ``backend_args=dict(backend='pixellm_atomic_local')``; it registers no URI
    prefix, so mmengine's default local backend is unchanged everywhere else.
    """

    def put(self, obj: bytes, filepath: Union[str, os.PathLike]) -> None:
        """Write bytes atomically.

        Args:
            obj (bytes): Data to write.
            filepath (str | PathLike): Target path.
        """
        atomic_write_bytes(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, os.PathLike],
                 encoding: str = 'utf-8') -> None:
        """Write text atomically.

        Args:
            obj (str): Text to write.
            filepath (str | PathLike): Target path.
            encoding (str): Text encoding. Defaults to ``'utf-8'``.
        """
        atomic_write_text(obj, filepath, encoding=encoding)
