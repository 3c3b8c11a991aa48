"""The data pre-flight check: which paths a config's datasets read, found without reading them."""
import os
import os.path as osp
import shutil

import pytest
from mmengine.config import Config
from torch.utils.data import Dataset

from pixellm.datasets.preflight import (MissingDataError, check_data_paths, find_data_paths,
                                        iter_dataset_cfgs)
from pixellm.registry import DATASETS

TINY = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'data', 'muse_tiny')


def muse(root, **kwargs):
    return dict(type='MUSEDataset', data_root=str(root), ann_file='muse_tiny.json',
                data_prefix=dict(img_path='images'), **kwargs)


def loader(dataset):
    return dict(batch_size=1, dataset=dataset)


@pytest.fixture
def root(tmp_path):
    shutil.copytree(TINY, tmp_path / 'muse')
    return tmp_path / 'muse'


def test_wrappers_are_walked_to_their_sources():
    leaf = dict(type='MUSEDataset', ann_file='a.json')
    cfg = dict(type='SampleRateMixDataset', groups=dict(
        a=[leaf, dict(type='ConcatDataset', datasets=[leaf, dict(type='RepeatDataset',
                                                                   dataset=leaf, times=2)])],
        b=leaf))
    assert [where for where, _ in iter_dataset_cfgs(cfg, 'train')] == [
        'train.groups.a[0]', 'train.groups.a[1].datasets[0]',
        'train.groups.a[1].datasets[1].dataset', 'train.groups.b']


def test_present_data_passes_and_unnamed_record_dependent_folders_are_not_required(root):
    # MUSE's COCO 2017 folders (for coco_url records) are not in this layout and not named by the
    # config: only records that need them could fail, and they name their image.
    cfg = Config(dict(train_dataloader=loader(muse(root)), val_dataloader=None))
    check_data_paths(cfg, ('train_dataloader', 'val_dataloader', 'test_dataloader'))
    # Named in the config, such a folder is required.
    named = muse(root)
    named['data_prefix'] = dict(img_path='images', train2017_img_path='coco2017')
    cfg = Config(dict(train_dataloader=loader(named)))
    with pytest.raises(MissingDataError) as err:
        check_data_paths(cfg, ('train_dataloader', ))
    assert [(m.what, m.path) for m in err.value.missing] == [
        ("data_prefix['train2017_img_path'] folder", osp.join(str(root), 'coco2017'))]


def test_every_missing_path_is_listed_with_its_dataset(root, tmp_path):
    os.remove(root / 'muse_tiny.json')
    reason = dict(type='ReasonSegDataset', data_root=str(tmp_path), split='train_val')
    cfg = Config(dict(train_dataloader=loader(dict(type='ConcatDataset',
                                                   datasets=[muse(root), reason]))))
    with pytest.raises(MissingDataError) as err:
        check_data_paths(cfg, ('train_dataloader', ))
    paths = [(m.where, m.what, m.path) for m in err.value.missing]
    assert paths == [
        ('train_dataloader.dataset.datasets[0]', 'annotation file',
         osp.join(str(root), 'muse_tiny.json')),
        ('train_dataloader.dataset.datasets[1]', "data_prefix['img_path'] folder",
         osp.join(str(tmp_path), 'reason_seg/ReasonSeg')),
        ('train_dataloader.dataset.datasets[1]', "'train' split folder",
         osp.join(str(tmp_path), 'reason_seg/ReasonSeg/train')),
        ('train_dataloader.dataset.datasets[1]', "'val' split folder",
         osp.join(str(tmp_path), 'reason_seg/ReasonSeg/val')),
    ]
    text = str(err.value)
    assert 'MUSEDataset' in text and 'ReasonSegDataset' in text
    assert 'docs/datasets.md' in text and 'itself does not exist' not in text


def test_missing_data_root_is_said_and_only_named_loaders_are_checked(tmp_path):
    absent = tmp_path / 'nowhere'
    cfg = Config(dict(train_dataloader=loader(muse(absent)),
                      test_dataloader=loader(muse(absent, test_mode=True))))
    missing = find_data_paths(cfg, ('test_dataloader', ))
    assert {m.where for m in missing} == {'test_dataloader.dataset'}
    with pytest.raises(MissingDataError, match=f"data_root '{absent}' itself does not exist"):
        check_data_paths(cfg, ('test_dataloader', ))


@DATASETS.register_module(force=True)
class PreflightPlainDataset(Dataset):
    """A torch Dataset: it has no ``lazy_init`` and does not say which files it reads."""

    def __init__(self, ann_file):
        raise AssertionError('the pre-flight check must not build a plain Dataset')


def test_datasets_that_do_not_say_what_they_read_are_skipped():
    # Plain torch Datasets (like the engine toy) and unregistered types are left to the runner.
    cfg = Config(dict(train_dataloader=loader(dict(type='SampleRateMixDataset', groups=dict(
        a=[dict(type='PreflightPlainDataset', ann_file='x.json'),
           dict(type='NotARegisteredDataset', ann_file='x.json')])))))
    assert find_data_paths(cfg, ('train_dataloader', )) == []
