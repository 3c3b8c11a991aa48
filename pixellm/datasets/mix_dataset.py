"""The training mix: groups of datasets drawn by sample rates, as PixelLM's ``--dataset`` and
``--sample_rates`` flags define it (``sem_seg||refer_seg||vqa||multi_reason_seg`` at ``2,9,2,4``).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.dataset import BaseDataset
from mmengine.logging import print_log
from torch.utils.data import Dataset

from pixellm.registry import DATASETS

DatasetLike = Union[dict, Dataset]


def _build(cfg: DatasetLike) -> Dataset:
    return DATASETS.build(cfg) if isinstance(cfg, dict) else cfg


@DATASETS.register_module()
class SampleRateMixDataset(Dataset):
    """Draw every sample from one of several dataset groups with fixed probabilities.

    Each group is a list of source datasets (``sem_seg`` = ADE20K, COCO-Stuff, ...). Item ``i``
    picks a group with probability proportional to its sample rate, then a source of that group
    uniformly (the official ``SemSegDataset``/``ReferSegDataset`` pick their sub-dataset
    uniformly, whatever its size), then an item of that source uniformly. The draw is a pure
    function of ``(seed, i)``: any sampler (mmengine's ``DefaultSampler`` and ``InfiniteSampler``
    shard indices over DDP ranks) sees the same mix on every rank count, and a resumed run
    continues the same sequence. The source's own pipeline turns the item into model inputs, so
    every source must end with the same packing transform. The pipelines' own random choices
    (question templates, sampled classes) come from NumPy's state, which mmengine seeds per
    dataloader worker from ``randomness.seed``: a run is reproducible for a fixed seed and worker
    count, not per index.

    The official ``HybridDataset`` ignores the index and draws with the global NumPy state, so its
    mix differs between runs and ranks; the rates are the same.

    Group sizes and rates are logged once, when the dataset is built.

    Args:
        groups (dict[str, list[dict | Dataset]]): Group name -> source dataset configs (or built
            datasets). Group order is the order of ``sample_rates``.
        sample_rates (Sequence[float]): One non-negative rate per group, not all zero (the
            seed recipe: ``(2, 9, 2, 4)``). Normalised to probabilities.
        num_samples (int): Length of the dataset, i.e. how many draws one pass over the indices
            makes (official: ``batch_size * grad_accumulation_steps * steps_per_epoch *
            world_size`` per epoch). Use a length covering the whole schedule for fresh draws
            throughout.
        seed (int): Seed of the draws. Defaults to 0.
        source_weights (str): ``'uniform'`` (official) picks a group's sources with equal
            probability; ``'size'`` in proportion to their lengths. Defaults to ``'uniform'``.
        lazy_init (bool): Defer sizing the sources (which loads their annotations) and logging
            the summary until the first draw or :meth:`full_init`. Defaults to False.
    """

    def __init__(self,
                 groups: Dict[str, Sequence[DatasetLike]],
                 sample_rates: Sequence[float],
                 num_samples: int,
                 seed: int = 0,
                 source_weights: str = 'uniform',
                 lazy_init: bool = False) -> None:
        if not isinstance(groups, dict) or not groups:
            raise ValueError('SampleRateMixDataset needs groups=dict(name=[dataset, ...]), got '
                             f'{groups!r}')
        rates = np.asarray(list(sample_rates), dtype=np.float64)
        if rates.shape != (len(groups), ):
            raise ValueError(f'{len(groups)} groups ({", ".join(groups)}) but '
                             f'{rates.size} sample rates {list(sample_rates)}; give one rate per '
                             'group, in group order')
        if (rates < 0).any() or rates.sum() <= 0:
            raise ValueError(f'sample rates must be non-negative and not all zero, got '
                             f'{list(sample_rates)}')
        if source_weights not in ('uniform', 'size'):
            raise ValueError(f"source_weights must be 'uniform' or 'size', got "
                             f'{source_weights!r}')
        if int(num_samples) <= 0:
            raise ValueError(f'num_samples must be positive, got {num_samples}')
        self.group_names: List[str] = list(groups)
        self.groups: List[List[Dataset]] = []
        for name, sources in groups.items():
            if isinstance(sources, (dict, Dataset)):
                sources = [sources]
            built = [_build(copy.deepcopy(s) if isinstance(s, dict) else s) for s in sources]
            if not built:
                raise ValueError(f'group {name!r} has no dataset')
            self.groups.append(built)
        self.probabilities = rates / rates.sum()
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.source_weights = source_weights
        self.metainfo = dict(dataset_name='SampleRateMix', groups=tuple(self.group_names))
        self._source_probs: Optional[List[np.ndarray]] = None
        if not lazy_init:
            self.full_init()

    def full_init(self) -> None:
        """Size every source (loading its annotations), check none is empty, log the mix.

        Raises:
            ValueError: A source has no items.
        """
        if self._source_probs is not None:
            return
        probs = []
        for name, sources in zip(self.group_names, self.groups):
            for k, ds in enumerate(sources):
                if hasattr(ds, 'full_init'):
                    ds.full_init()
                if len(ds) == 0:
                    raise ValueError(f'group {name!r}, source {k} ({_describe(ds)}) is empty; '
                                     'check its annotation file or drop it from the group')
            sizes = np.array([len(s) for s in sources], dtype=np.float64)
            w = np.ones_like(sizes) if self.source_weights == 'uniform' else sizes
            probs.append(w / w.sum())
        self._source_probs = probs
        print_log(self.summary(), logger='current')

    def summary(self) -> str:
        """Describe the mix: per group its rate, probability and sources with their sizes.

        Returns:
            str: A multi-line description (logged at construction).
        """
        self.full_init()
        lines = [f'SampleRateMixDataset: {self.num_samples} samples, seed {self.seed}']
        for name, sources, p in zip(self.group_names, self.groups, self.probabilities):
            parts = ', '.join(f'{_describe(s)}={len(s)}' for s in sources)
            lines.append(f'  {name}: p={p:.3f}, {sum(len(s) for s in sources)} items ({parts})')
        return '\n'.join(lines)

    def __len__(self) -> int:
        return self.num_samples

    def locate(self, index: int) -> Tuple[int, int, int]:
        """Return which ``(group, source, item)`` index ``index`` draws.

        Args:
            index (int): Dataset index in ``[0, len(self))``.

        Returns:
            tuple[int, int, int]: Group position, source position within the group, item index.
        """
        if not 0 <= index < self.num_samples:
            raise IndexError(f'index {index} out of range for {self.num_samples} samples')
        self.full_init()
        rng = np.random.default_rng((self.seed, int(index)))
        group = int(rng.choice(len(self.groups), p=self.probabilities))
        sources = self.groups[group]
        source = int(rng.choice(len(sources), p=self._source_probs[group]))
        item = int(rng.integers(len(sources[source])))
        return group, source, item

    def __getitem__(self, index: int):
        group, source, item = self.locate(index)
        return self.groups[group][source][item]

    def get_data_info(self, index: int) -> dict:
        """The drawn source's data info, with ``mix_group`` naming its group."""
        group, source, item = self.locate(index)
        ds = self.groups[group][source]
        if not isinstance(ds, BaseDataset):
            return dict(mix_group=self.group_names[group])
        return dict(ds.get_data_info(item), mix_group=self.group_names[group])

    def __repr__(self) -> str:
        return self.summary()


def _describe(ds: Dataset) -> str:
    name = type(ds).__name__
    ann = getattr(ds, 'ann_file', None)
    return f'{name}({ann})' if ann else name


def group_counts(dataset: SampleRateMixDataset,
                 indices: Optional[Sequence[int]] = None) -> Dict[str, int]:
    """Count how many of ``indices`` (default: all) each group receives.

    Args:
        dataset (SampleRateMixDataset): The mix.
        indices (Sequence[int], optional): Indices to count. Defaults to all.

    Returns:
        dict[str, int]: Group name -> count.
    """
    counts = {name: 0 for name in dataset.group_names}
    for i in (range(len(dataset)) if indices is None else indices):
        counts[dataset.group_names[dataset.locate(i)[0]]] += 1
    return counts
