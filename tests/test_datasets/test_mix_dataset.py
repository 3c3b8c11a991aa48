"""SampleRateMixDataset: rates over many draws, determinism, DDP sharding, errors."""
import numpy as np
import pytest
from mmengine.dataset import DefaultSampler
from torch.utils.data import Dataset

from pixellm.datasets.mix_dataset import SampleRateMixDataset, group_counts


class _Items(Dataset):
    """A source whose item i is (name, i)."""

    def __init__(self, name, size):
        self.name, self.size = name, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return (self.name, i)


def _mix(rates=(2, 9, 2, 4), num=20000, seed=0, **kw):
    groups = dict(sem_seg=[_Items('ade', 5), _Items('stuff', 500)],
                  refer_seg=[_Items('refcoco', 50)],
                  vqa=[_Items('llava', 7)],
                  multi_reason_seg=[_Items('muse', 30)])
    return SampleRateMixDataset(groups, rates, num_samples=num, seed=seed, **kw)


def test_group_rates_match_sample_rates():
    mix = _mix()
    counts = group_counts(mix)
    expected = np.array([2, 9, 2, 4]) / 17 * len(mix)
    got = np.array([counts[g] for g in mix.group_names])
    # Binomial std at n=20000 is at most ~70; 5 sigma.
    assert np.all(np.abs(got - expected) < 350), (got, expected)


def test_sources_uniform_within_group_regardless_of_size():
    mix = _mix(rates=(1, 0, 0, 0), num=4000)
    names = [mix[i][0] for i in range(len(mix))]
    assert set(names) == {'ade', 'stuff'}
    # Official: sub-datasets of a group are picked uniformly, not by size.
    assert abs(names.count('ade') - 2000) < 200
    sized = _mix(rates=(1, 0, 0, 0), num=4000, source_weights='size')
    ade = sum(sized[i][0] == 'ade' for i in range(len(sized)))
    assert ade < 120  # 5 of 505 items


def test_items_cover_the_source_and_draws_are_deterministic():
    mix = _mix(rates=(0, 0, 1, 0), num=500)
    items = {mix[i][1] for i in range(len(mix))}
    assert items == set(range(7))
    again = _mix(rates=(0, 0, 1, 0), num=500)
    assert [mix[i] for i in range(50)] == [again[i] for i in range(50)]
    other = _mix(rates=(0, 1, 1, 1), num=500, seed=1)
    mine = _mix(rates=(0, 1, 1, 1), num=500, seed=0)
    assert [other[i] for i in range(100)] != [mine[i] for i in range(100)]


def test_ddp_ranks_partition_the_same_draws(monkeypatch):
    mix = _mix(num=101)
    one = [mix[i] for i in DefaultSampler(mix, shuffle=True, seed=3)]
    shards = []
    for rank in range(2):
        # What DefaultSampler sees on each rank of a 2-process DDP run.
        monkeypatch.setattr('mmengine.dataset.sampler.get_dist_info', lambda r=rank: (r, 2))
        shards.append([mix[i] for i in DefaultSampler(mix, shuffle=True, seed=3)])
    # The two ranks together see the one-process draws, plus one repeat padding 101 to 102.
    merged = sorted(shards[0] + shards[1])
    assert len(merged) == 102
    for item in one:
        merged.remove(item)
    assert len(merged) == 1 and merged[0] in one


def test_summary_names_groups_and_sizes():
    text = _mix().summary()
    assert 'sem_seg: p=0.118, 505 items (_Items=5, _Items=500)' in text
    assert 'refer_seg: p=0.529' in text


@pytest.mark.parametrize('kwargs, message', [
    (dict(rates=(1, 2)), '4 groups (sem_seg, refer_seg, vqa, multi_reason_seg) but 2 sample'),
    (dict(rates=(0, 0, 0, 0)), 'not all zero'),
    (dict(rates=(1, -1, 1, 1)), 'non-negative'),
    (dict(num=0), 'num_samples must be positive'),
    (dict(source_weights='big'), "source_weights must be 'uniform' or 'size'"),
])
def test_bad_settings_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        _mix(**kwargs)


def test_empty_source_is_named():
    with pytest.raises(ValueError, match="group 'vqa', source 0 .* is empty"):
        SampleRateMixDataset(dict(vqa=[_Items('x', 0)]), [1], num_samples=3)


class _Unloaded(_Items):
    """A source that counts how often it was sized (sizing loads annotations)."""

    sized = 0

    def __len__(self):
        type(self).sized += 1
        return super().__len__()


def test_lazy_init_defers_loading_the_sources():
    _Unloaded.sized = 0
    mix = SampleRateMixDataset(dict(vqa=[_Unloaded('llava', 7)]), [1], num_samples=5,
                               lazy_init=True)
    assert _Unloaded.sized == 0 and len(mix) == 5
    assert mix[0][0] == 'llava' and _Unloaded.sized > 0
