"""Check that the files a config's datasets read exist, before any model weight is loaded.

A dataset otherwise finds its files missing only when the runner first loads its annotations, which
for the 7B/13B recipes is after minutes of loading weights. Here every dataset of the chosen
dataloaders is built with ``lazy_init=True`` and no pipeline (nothing is read), and the paths it
joined from ``data_root`` are looked up.
"""
import copy
import os
import os.path as osp
from typing import Any, Iterator, List, NamedTuple, Sequence, Tuple

from mmengine.config import Config
from mmengine.dataset import BaseDataset
from mmengine.fileio import exists

from pixellm.datasets.dataset_utils import LAYOUT_DOC
from pixellm.datasets.muse_dataset import MUSEDataset
from pixellm.datasets.reason_seg_dataset import ReasonSegDataset
from pixellm.registry import DATASETS

# Path attributes a dataset may carry besides ``ann_file`` (ReferSegDataset's COCO instances,
# ReasonSegDataset's explanations, the label-map sources' class list), and what each one is.
_FILE_ATTRIBUTES = (('ann_file', 'annotation file'), ('instances_file', 'instances file'),
                    ('explanation_file', 'explanation file'), ('class_file', 'class list'))
# data_prefix folders that only some records read: MUSE's COCO 2017 folders hold the images of its
# coco_url records, which only its annotations tell. Checked when the config names them.
_RECORD_DEPENDENT_PREFIXES = ((MUSEDataset, ('train2017_img_path', 'val2017_img_path')), )


class DataPath(NamedTuple):
    """A path a dataset reads.

    Attributes:
        where (str): The dataset's config key, e.g.
            ``'train_dataloader.dataset.groups.sem_seg[0]'``.
        dataset (str): The dataset class, with the ``dataset_name`` its config gives.
        what (str): What the path is, e.g. ``'annotation file'`` or
            ``"data_prefix['img_path'] folder"``.
        path (str): The path, joined with the dataset's ``data_root``.
        data_root (str): The dataset's ``data_root``.
    """

    where: str
    dataset: str
    what: str
    path: str
    data_root: str


class MissingDataError(FileNotFoundError):
    """Files or folders that a config's datasets read do not exist.

    The message lists every missing path with the dataset and config key that reads it, says
    under which ``data_root`` to prepare them and points at :data:`LAYOUT_DOC`.

    Args:
        missing (Sequence[DataPath]): The missing paths.
    """

    def __init__(self, missing: Sequence[DataPath]) -> None:
        self.missing = list(missing)
        lines = [f'{len(self.missing)} path(s) that the datasets of this config read do not exist '
                 '(checked before the model is built):']
        lines += [f'  - {m.where} ({m.dataset}): {m.what} {m.path!r}' for m in self.missing]
        roots = sorted({m.data_root for m in self.missing})
        lines += [f'data_root {root!r} itself does not exist (a relative data_root is taken from '
                  f'the current directory, {os.getcwd()!r}).' for root in roots
                  if root and not exists(root)]
        lines.append(
            f'Prepare them under data_root={", ".join(repr(r) for r in roots)} (a symbolic link '
            'to your copy of the data works), or set data_root in the config. '
            f'{LAYOUT_DOC} describes the folder layout of every dataset and where to get it.')
        super().__init__('\n'.join(lines))


def _type_name(obj_type: Any) -> str:
    return obj_type if isinstance(obj_type, str) else getattr(obj_type, '__name__', str(obj_type))


def iter_dataset_cfgs(dataset_cfg: Any, where: str) -> Iterator[Tuple[str, dict]]:
    """Yield every leaf dataset config of a (possibly wrapped) dataset config.

    Wrappers are recognised by their keys: ``groups`` (``SampleRateMixDataset``), ``datasets``
    (``ConcatDataset``) and ``dataset`` (``RepeatDataset``, ``ClassBalancedDataset``).

    Args:
        dataset_cfg (Any): A dataset config dict (a built dataset yields nothing).
        where (str): Its config key, used to name the leaves.

    Yields:
        tuple[str, dict]: The leaf's config key and its config.
    """
    if not isinstance(dataset_cfg, dict):
        return
    groups, datasets, inner = (dataset_cfg.get(key) for key in ('groups', 'datasets', 'dataset'))
    if isinstance(groups, dict):
        for name, sources in groups.items():
            if isinstance(sources, dict):
                yield from iter_dataset_cfgs(sources, f'{where}.groups.{name}')
                continue
            for k, source in enumerate(sources):
                yield from iter_dataset_cfgs(source, f'{where}.groups.{name}[{k}]')
    elif isinstance(datasets, (list, tuple)):
        for k, source in enumerate(datasets):
            yield from iter_dataset_cfgs(source, f'{where}.datasets[{k}]')
    elif isinstance(inner, dict):
        yield from iter_dataset_cfgs(inner, f'{where}.dataset')
    else:
        yield where, dataset_cfg


def dataset_paths(dataset: BaseDataset, configured_prefixes: Sequence[str] = ()
                  ) -> List[Tuple[str, str]]:
    """The paths a lazily built dataset will read: its files and its ``data_prefix`` folders.

    A folder that only some records read (:data:`_RECORD_DEPENDENT_PREFIXES`) is included only
    when the config names it; its class default may well be unused (the demo's MUSE files have no
    ``coco_url`` record), and a record that needs it names its missing image when loaded.

    Args:
        dataset (BaseDataset): A dataset built with ``lazy_init=True``.
        configured_prefixes (Sequence[str]): The ``data_prefix`` keys its config sets.
            Defaults to ().

    Returns:
        list[tuple[str, str]]: ``(what, path)`` pairs, paths joined with ``data_root``.
    """
    paths = []
    for attribute, what in _FILE_ATTRIBUTES:
        path = getattr(dataset, attribute, '')
        if isinstance(path, str) and path:
            paths.append((what, path))
    skipped = {key for cls, keys in _RECORD_DEPENDENT_PREFIXES if isinstance(dataset, cls)
               for key in keys if key not in configured_prefixes}
    for key, folder in (getattr(dataset, 'data_prefix', None) or {}).items():
        if isinstance(folder, str) and folder and key not in skipped:
            paths.append((f'data_prefix[{key!r}] folder', folder))
    # ReasonSeg reads one folder per split under its image prefix.
    if isinstance(dataset, ReasonSegDataset):
        paths += [(f'{split!r} split folder', osp.join(dataset.data_prefix['img_path'], split))
                  for split in dataset.splits]
    return paths


def find_data_paths(cfg: Config, dataloaders: Sequence[str]) -> List[DataPath]:
    """Build the datasets of ``dataloaders`` lazily and list the paths they read that are missing.

    Only :class:`mmengine.dataset.BaseDataset` subclasses are inspected (other datasets do not
    say what they read); a dataloader that is absent or None is skipped. A path that several
    datasets read (the COCO images) is listed once, with the first of them.

    Args:
        cfg (Config): The full config.
        dataloaders (Sequence[str]): Dataloader keys, e.g. ``('train_dataloader',
            'val_dataloader')``.

    Returns:
        list[DataPath]: The missing paths.
    """
    missing, seen = [], set()
    for key in dataloaders:
        loader = cfg.get(key)
        if not isinstance(loader, dict) or loader.get('dataset') is None:
            continue
        for where, dataset_cfg in iter_dataset_cfgs(loader['dataset'], f'{key}.dataset'):
            dataset_type = dataset_cfg.get('type')
            cls = DATASETS.get(dataset_type) if isinstance(dataset_type, str) else dataset_type
            if not (isinstance(cls, type) and issubclass(cls, BaseDataset)):
                continue
            lazy_cfg = copy.deepcopy(dict(dataset_cfg))
            lazy_cfg.update(lazy_init=True, pipeline=[])
            dataset = DATASETS.build(lazy_cfg)
            name = _type_name(dataset_type)
            if 'dataset_name' in dataset_cfg:
                name = f'{name} {dataset_cfg["dataset_name"]}'
            for what, path in dataset_paths(dataset, list(dataset_cfg.get('data_prefix') or {})):
                if path in seen or exists(path):
                    continue
                seen.add(path)
                missing.append(DataPath(where, name, what, path, dataset.data_root))
    return missing


def check_data_paths(cfg: Config, dataloaders: Sequence[str]) -> None:
    """Raise :class:`MissingDataError` unless every path the datasets read exists.

    Args:
        cfg (Config): The full config.
        dataloaders (Sequence[str]): Dataloader keys to check.

    Raises:
        MissingDataError: Listing every missing path.
    """
    missing = find_data_paths(cfg, dataloaders)
    if missing:
        raise MissingDataError(missing)


__all__ = ['DataPath', 'MissingDataError', 'check_data_paths', 'dataset_paths',
           'find_data_paths', 'iter_dataset_cfgs']
