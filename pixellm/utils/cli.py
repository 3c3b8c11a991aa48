"""One line for a user's mistake: the error reporting every tool under ``tools/`` shares.

A tool wraps its ``main(argv)`` with :func:`cli_main` and gives its parser ``--debug``
(:func:`add_debug_argument`)::

    @cli_main
    def main(argv=None):
        args = parse_args(argv)
        ...

An exception that escapes ``main`` is then reported as one line on stderr, the last line the tool
prints, and ``main`` raises ``SystemExit``:

* a user error (a missing, empty, truncated or untrusted file, an unknown config type, a bad
  keyword argument, undecodable text; see :func:`is_user_error`) prints
  ``error: <file>: <what>`` (or ``error: <what>`` when no file is involved) and exits with
  status 2 (:data:`EXIT_USER_ERROR`);
* any other exception prints ``error: <type>: <message>`` with a pointer to ``--debug`` and
  exits with status 1 (:data:`EXIT_INTERNAL_ERROR`).

``--debug`` on the command line, or the environment variable ``PIXELLM_DEBUG=1``, re-raises the
exception instead, with its full traceback. ``SystemExit`` (argparse's usage errors, the tools'
own messages) and ``KeyboardInterrupt`` pass through unchanged.

Exception classes of other modules join the user errors with :func:`register_user_error`, or by
subclassing :class:`UserError`.
"""
import functools
import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Type

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
DEBUG_FLAG = '--debug'
DEBUG_ENV = 'PIXELLM_DEBUG'


class UserError(Exception):
    """A mistake in what the user gave a tool, reported as ``error: <file>: <reason>``.

    Args:
        reason (str): What is wrong, without the file name.
        filename (str, optional): The file (or option) it is about. Defaults to None.
    """

    def __init__(self, reason: str, filename: Optional[str] = None) -> None:
        self.reason = reason
        self.filename = filename
        super().__init__(f'{filename}: {reason}' if filename else reason)


# OS errors that are about a path the user gave.
_PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
# Classes of pixellm and mmengine modules, by import path: looked up only when their module is
# already imported (an exception of a module that was never imported cannot occur).
_LAZY_USER_ERRORS = (
    'pixellm.engine.checkpoint.BadCheckpointError',
    'pixellm.engine.checkpoint.UntrustedCheckpointError',
    'pixellm.apis.inference.InferenceInputError',
    # A dataset file or record that breaks its format (InvalidTargetError, UnsafePickleError...).
    'pixellm.datasets.muse_dataset.DatasetFormatError',
    'pixellm.models.export.CheckpointMismatchError',
    'mmengine.config.utils.ConfigParsingError',
)
_REGISTERED: List[Type[BaseException]] = []


def register_user_error(*classes: Type[BaseException]) -> None:
    """Report these exception classes (and their subclasses) as user errors, exit status 2.

    Args:
        *classes (type): Exception classes, e.g. a dataset's annotation error.
    """
    for cls in classes:
        if cls not in _REGISTERED:
            _REGISTERED.append(cls)


def _lazy_classes() -> List[type]:
    classes = []
    for path in _LAZY_USER_ERRORS:
        module_name, name = path.rsplit('.', 1)
        module = sys.modules.get(module_name)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type):
            classes.append(cls)
    return classes


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports a mistake in the user's input rather than a failure of the code.

    Args:
        err (BaseException): The exception.

    Returns:
        bool: True for :class:`UserError`, registered classes, checkpoint and config errors,
        :class:`UnicodeError`, OS errors about a path, and registry ``KeyError`` s for an unknown
        ``type``.
    """
    if isinstance(err, (UserError, UnicodeError, *_PATH_ERRORS, *_REGISTERED,
                        *_lazy_classes())):
        return True
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
        text = err.args[0]
        return 'registry' in text and ('is not registered in' in text or 'is not in the' in text)
    return False


def one_line(text: str) -> str:
    """``text`` with its lines stripped and joined by spaces.

    Args:
        text (str): A message, possibly over several lines.

    Returns:
        str: The message on one line.
    """
    return ' '.join(part.strip() for part in str(text).splitlines() if part.strip())


def format_error(err: BaseException) -> str:
    """The one line :func:`cli_main` prints for ``err``.

    Args:
        err (BaseException): The exception.

    Returns:
        str: ``error: <file>: <what>`` for a user error about a file, ``error: <what>`` for one
        without a file, ``error: <type>: <message> (...)`` for any other exception.
    """
    if not is_user_error(err):
        message = one_line(err) or '(no message)'
        return (f'error: {type(err).__name__}: {message} (an unexpected error; run again with '
                f'{DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)')
    filename = getattr(err, 'filename', None)
    reason = getattr(err, 'reason', None)
    if reason is None and isinstance(err, OSError) and err.strerror and filename:
        reason = err.strerror
    if reason is None:
        if isinstance(err, KeyError) and err.args:
            reason = str(err.args[0])  # str(KeyError) adds quotes
        elif isinstance(err, UnicodeError):
            reason = f'undecodable text: {err}'
        else:
            reason = str(err)
    reason = one_line(reason) or type(err).__name__
    if filename:
        return f'error: {os.fspath(filename)}: {reason}'
    return f'error: {reason}'


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether the user asked for tracebacks: ``--debug`` in ``argv`` or ``PIXELLM_DEBUG=1``.

    Args:
        argv (Sequence[str], optional): The tool's arguments; ``None`` reads ``sys.argv[1:]``.

    Returns:
        bool: True when tracebacks are wanted.
    """
    if os.environ.get(DEBUG_ENV, '').strip().lower() not in ('', '0', 'false', 'no'):
        return True
    argv = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in [str(arg) for arg in argv]


def add_debug_argument(parser: Any) -> None:
    """Add ``--debug`` (the full traceback instead of one line) to an ``argparse`` parser.

    Args:
        parser (argparse.ArgumentParser): The tool's parser.
    """
    parser.add_argument(DEBUG_FLAG, action='store_true',
                        help='on an error, show the full traceback instead of one line (also '
                        f'{DEBUG_ENV}=1)')


def report_error(err: BaseException) -> int:
    """Print ``err`` as one line on stderr, after flushing stdout.

    Args:
        err (BaseException): The exception.

    Returns:
        int: The exit status: :data:`EXIT_USER_ERROR` or :data:`EXIT_INTERNAL_ERROR`.
    """
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(format_error(err), file=sys.stderr, flush=True)
    return EXIT_USER_ERROR if is_user_error(err) else EXIT_INTERNAL_ERROR


def cli_main(main: Callable) -> Callable:
    """Wrap a tool's ``main(argv=None)``: errors become one line on stderr and ``SystemExit``.

    Args:
        main (Callable): The tool's entry point; its first argument is ``argv``.

    Returns:
        Callable: ``main`` with the same signature and return value; on an exception it prints
        :func:`format_error`'s line and raises ``SystemExit`` with status 2 (user error) or 1,
        unless :func:`debug_requested`, in which case the exception propagates.
    """

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None, *args, **kwargs):
        try:
            return main(argv, *args, **kwargs)
        except (SystemExit, KeyboardInterrupt, GeneratorExit):
            raise
        except Exception as err:
            if debug_requested(argv):
                raise
            raise SystemExit(report_error(err)) from None

    return wrapper
