"""Helpers shared by the dataset adapters: pipeline building, file reading with errors that name
the file (pickles through an unpickler that loads no code), and binary masks as COCO compressed
RLE."""
import io
import json
import pickle
from typing import Any, Callable, List, Sequence, Union

import numpy as np
from mmengine.fileio import get
from pycocotools import mask as mask_utils

from pixellm.datasets.muse_dataset import DatasetFormatError
from pixellm.registry import TRANSFORMS

# Where the data layout is described, for the error raised when a split file is missing.
LAYOUT_DOC = 'docs/datasets.md'


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (bool, an int subclass, is not an id or a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def has_key(table: dict, key: Any) -> bool:
    """``key in table``, False for an unhashable key (a list or dict where an id belongs)."""
    try:
        return key in table
    except TypeError:
        return False


def build_pipeline(pipeline: Sequence[Union[dict, Callable]]) -> List[Callable]:
    """Build transform configs from pixellm's registry.

    mmengine's ``Compose`` resolves names in the current default scope, which outside a pixellm
    runner would pick mmcv's ``LoadImageFromFile`` or fail.

    Args:
        pipeline (Sequence[dict | Callable]): Transform configs or transforms.

    Returns:
        list[Callable]: The transforms.
    """
    return [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]


def missing_file_error(dataset: str, what: str, path: str, prepare: str,
                       data_root: str) -> FileNotFoundError:
    """Return the error for a split or annotation file that is not on disk.

    Args:
        dataset (str): The dataset class, e.g. ``'ReferSegDataset'``.
        what (str): What the file is, e.g. ``'refs file of refcoco (splitBy unc)'``.
        path (str): The path that was looked up.
        prepare (str): The path to prepare, relative to ``data_root``.
        data_root (str): The dataset's ``data_root``.

    Returns:
        FileNotFoundError: Naming the path, what to prepare and where the layout is described.
    """
    return FileNotFoundError(
        f'{dataset}: {what} {path!r} does not exist. Prepare {prepare!r} under '
        f'data_root={data_root!r}; {LAYOUT_DOC} (and the official PixelLM README, "Training '
        'Data Preparation") shows the expected folder layout.')


def read_bytes(path: str, dataset: str, what: str, prepare: str, data_root: str) -> bytes:
    """Read a file, turning a missing file into :func:`missing_file_error`.

    Args:
        path (str): File to read.
        dataset (str): The dataset class, for the error.
        what (str): What the file is, for the error.
        prepare (str): The path to prepare, relative to ``data_root``, for the error.
        data_root (str): The dataset's ``data_root``, for the error.

    Returns:
        bytes: The file's content.
    """
    try:
        return get(path)
    except FileNotFoundError as err:
        raise missing_file_error(dataset, what, path, prepare, data_root) from err


class UnsafePickleError(DatasetFormatError):
    """A pickled data file names a class or function, so it was not unpickled.

    Attributes:
        global_name (str): The refused ``module.name``.

    Args:
        file (str): The pickle file.
        global_name (str): The ``module.name`` the pickle asked for.
    """

    def __init__(self, file: str, global_name: str) -> None:
        self.global_name = global_name
        super().__init__(
            file, '', '<pickle>',
            f'refused to unpickle: the file names the global {global_name!r}; an annotation '
            'pickle may hold only dict, list, tuple, str, int, float, bool, None and bytes, so '
            'no class or function is loaded from it (it could run code)')


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds builtin containers and scalars only and refuses every global."""

    def __init__(self, data: bytes, file: str) -> None:
        super().__init__(io.BytesIO(data))
        self._file = file

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(self._file, f'{module}.{name}')

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self._file, f'persistent id {pid!r}')


def load_data_pickle(data: bytes, path: str) -> Any:
    """Unpickle a data file (e.g. REFER's ``refs(unc).p``) without loading any code.

    Real annotation pickles hold builtin containers and scalars only (REFER's refs: a list of
    dicts of ints, strs and lists), which pickle builds from its own opcodes. Anything that needs
    a global (a class, a function such as ``os.system``, a ``__reduce__`` object) or a persistent
    id is refused before it is looked up, so nothing in the file runs.

    Args:
        data (bytes): The file's content.
        path (str): The file, for errors.

    Returns:
        Any: The unpickled value.

    Raises:
        UnsafePickleError: The pickle names a global; the message names the file and the global.
        DatasetFormatError: The bytes are not a readable pickle.
    """
    try:
        return _DataUnpickler(data, path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, MemoryError, OverflowError) as err:
        raise DatasetFormatError(path, '', '<pickle>',
                                 f'not a readable pickle ({type(err).__name__}: {err})') from err


def parse_json(data: bytes, path: str, encodings: Sequence[str] = ('utf-8', )) -> Any:
    """Decode and parse json, reporting a syntax error with its line and column.

    Args:
        data (bytes): The file's content.
        path (str): The file, for errors.
        encodings (Sequence[str]): Text encodings tried in order (ReasonSeg's labelme files fall
            back to cp1252, as the official reader does). Defaults to ``('utf-8',)``.

    Returns:
        Any: The parsed json.

    Raises:
        DatasetFormatError: The bytes decode in none of ``encodings`` or are not valid json.
    """
    for encoding in encodings:
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise DatasetFormatError(path, '', '<file>',
                                 f'not text in any of the encodings {list(encodings)}')
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(path, '', '<json>',
                                 f'not valid json: {err.msg} at line {err.lineno}, column '
                                 f'{err.colno}') from err


def read_json(path: str, expected: type, description: str, dataset: str, what: str,
              prepare: str, data_root: str, encodings: Sequence[str] = ('utf-8', )) -> Any:
    """Read a json file whose top level must be of type ``expected``.

    Args:
        path (str): File to read.
        expected (type): ``list`` or ``dict``.
        description (str): What the top level holds, for the error (``'a list of refs'``).
        dataset (str): The dataset class, for a missing file.
        what (str): What the file is, for a missing file.
        prepare (str): The path to prepare, relative to ``data_root``, for a missing file.
        data_root (str): The dataset's ``data_root``, for a missing file.
        encodings (Sequence[str]): See :func:`parse_json`. Defaults to ``('utf-8',)``.

    Returns:
        list | dict: The parsed json.

    Raises:
        FileNotFoundError: See :func:`missing_file_error`.
        DatasetFormatError: Not json, or the top level is not ``expected``.
    """
    content = parse_json(read_bytes(path, dataset, what, prepare, data_root), path, encodings)
    if not isinstance(content, expected):
        raise DatasetFormatError(path, '', '<top level>',
                                 f'must be {description}, got {type(content).__name__}')
    return content


def encode_mask(mask: np.ndarray) -> dict:
    """Encode a binary ``(H, W)`` mask as COCO compressed RLE with a json-safe ``counts`` string.

    Args:
        mask (np.ndarray): Boolean or 0/1 mask.

    Returns:
        dict: ``dict(size=[H, W], counts=str)``, which ``decode_segmentation`` reads back.
    """
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(v) for v in rle['size']], counts=rle['counts'].decode('ascii'))


def segmentation_to_rle(segm: Union[list, dict], height: int, width: int) -> dict:
    """Convert a valid COCO ``segmentation`` (polygons or either RLE form) to compressed RLE.

    Works on run lengths only (no dense mask), so merging many instances stays cheap.

    Args:
        segm (list | dict): Polygons, an uncompressed RLE (``counts`` a list) or a compressed one.
        height (int): Image height, for polygons.
        width (int): Image width, for polygons.

    Returns:
        dict: pycocotools RLE with ``counts`` as bytes.
    """
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm['counts'], list):
        return mask_utils.frPyObjects(segm, *segm['size'])
    counts = segm['counts']
    return dict(size=list(segm['size']),
                counts=counts.encode('ascii') if isinstance(counts, str) else counts)


def merge_segmentations(segms: Sequence[Union[list, dict]], height: int, width: int) -> dict:
    """Return the union of valid COCO segmentations as a compressed RLE (json-safe ``counts``).

    Args:
        segms (Sequence[list | dict]): Segmentations of one image; empty gives an empty mask.
        height (int): Image height.
        width (int): Image width.

    Returns:
        dict: ``dict(size=[height, width], counts=str)``.
    """
    if not segms:
        return encode_mask(np.zeros((height, width), dtype=np.uint8))
    rles = [segmentation_to_rle(s, height, width) for s in segms]
    rle = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    counts = rle['counts']
    return dict(size=[int(v) for v in rle['size']],
                counts=counts.decode('ascii') if isinstance(counts, bytes) else counts)


def clean_polygons(segm: Any) -> Any:
    """Drop polygons of fewer than 3 points (or an odd number of coordinates) from a polygon list.

    COCO has a few such degenerate polygons; the official gRefCOCO loader drops them (and its part loader skips such images), and
    pycocotools would read a leading 4-number one as a box. Anything that is not a list of
    numbers is left for :func:`check_segmentation` to report.
    """
    if not isinstance(segm, list):
        return segm
    return [
        poly for poly in segm
        if not (isinstance(poly, list)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly)
                and (len(poly) < 6 or len(poly) % 2))
    ]
