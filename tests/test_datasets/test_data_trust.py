"""Trust at the data boundary: pickled annotations load no code, invalid targets stop with one
error (or are skipped on request), and the three loader cases read as the official tools read
them (refCLEF's RLE lists, gRefCOCO crowd objects, EXIF-oriented images)."""
import json
import os
import os.path as osp
import pickle
import subprocess

import numpy as np
import pytest
from conftest import captured_log_records
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils
from refer_fixtures import ANN_MASKS, box_mask, instances, run, sentences, write_refer
from test_reason_seg_dataset import REASON, labelme, rect, shape

from pixellm.datasets import (DatasetFormatError, GRefCOCODataset, InvalidTargetError,
                              MUSEDataset, ReasonSegDataset, ReferSegDataset, SampleReferPhrases,
                              UnsafePickleError, load_data_pickle)
from pixellm.datasets.muse_dataset import check_target, rle_string_counts
from pixellm.datasets.transforms import DecodeTargetMasks, LoadImageFromFile, SampleQuestion
from pixellm.datasets.transforms.loading import apply_orientation


def refs():
    """A refcoco-style refs list, as the real ``refs(unc).p`` holds: dicts of ints, strs, lists."""
    return [dict(ref_id=100, ann_id=11, image_id=1, category_id=1, split='train', file_name='x',
                 sent_ids=[0], sentences=sentences('man on left', start=0)),
            dict(ref_id=101, ann_id=13, image_id=2, category_id=18, split='val', file_name='y',
                 sent_ids=[1], sentences=sentences('dog', start=1))]


# ----------------------------------------------------------------------------- pickles

class _Reduce:
    """An object whose unpickling calls ``os.system`` with ``command``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command, ))


def _malicious(kind, marker):
    command = f'touch {marker}'
    if kind == 'os.system':
        return pickle.dumps(_Reduce(command))
    if kind == 'subprocess':
        # Protocol 0 by hand: subprocess.call(['touch', marker]).
        return b'csubprocess\ncall\n((Vtouch\nV' + str(marker).encode() + b'\nltR.'
    if kind == 'builtins.eval':
        return (b'cbuiltins\neval\n(V__import__("os").system("' + command.encode() +
                b'")\ntR.')
    # A global hidden inside a valid refs list, as an edited real file would be.
    return pickle.dumps([dict(ref_id=1, sentences=[_Reduce(command)])], protocol=2)


@pytest.mark.parametrize('kind,refused', [('os.system', 'posix.system'),
                                          ('subprocess', 'subprocess.call'),
                                          ('builtins.eval', 'builtins.eval'),
                                          ('nested', 'posix.system')])
def test_malicious_refs_pickle_is_refused_without_running_it(tmp_path, kind, refused):
    root = write_refer(tmp_path, refs())
    marker = tmp_path / 'pwned'
    path = osp.join(root, 'refer_seg', 'refcoco', 'refs(unc).p')
    with open(path, 'wb') as f:
        f.write(_malicious(kind, marker))
    with pytest.raises(UnsafePickleError) as info:
        ReferSegDataset(data_root=root, serialize_data=False)
    assert not marker.exists()
    message = str(info.value)
    assert path in message and refused in message and '\n' not in message
    assert info.value.global_name == refused


def test_a_pickle_that_would_run_a_command_under_pickle_does_so():
    # Guards the test above: the crafted file really runs its command when unpickled freely.
    marker = f'/tmp/pixellm_trust_probe_{os.getpid()}'
    try:
        pickle.loads(_malicious('os.system', marker))
        assert osp.exists(marker)
    finally:
        if osp.exists(marker):
            os.remove(marker)


@pytest.mark.parametrize('protocol', [0, 2, pickle.HIGHEST_PROTOCOL])
def test_refs_like_the_real_files_load_with_every_protocol(tmp_path, protocol):
    data = refs() + [dict(ref_id=7, score=0.5, flag=True, none=None, raw=b'\x00', pair=(1, 'a'))]
    if protocol < 3:
        data[-1].pop('raw')  # bytes of protocols 0-2 need a global (_codecs.encode)
    assert load_data_pickle(pickle.dumps(data, protocol=protocol), 'refs.p') == data
    root = write_refer(tmp_path, refs())
    with open(osp.join(root, 'refer_seg', 'refcoco', 'refs(unc).p'), 'wb') as f:
        pickle.dump(refs(), f, protocol=protocol)
    assert len(ReferSegDataset(data_root=root, serialize_data=False)) == 1


def test_truncated_pickle_is_one_format_error(tmp_path):
    with pytest.raises(DatasetFormatError, match=r'refs\.p.*not a readable pickle'):
        load_data_pickle(pickle.dumps(refs())[:-20], 'refs.p')


def test_the_loader_has_no_other_unrestricted_unpickling():
    # Every pickle read under pixellm/datasets goes through load_data_pickle.
    root = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'pixellm')
    out = subprocess.run(['grep', '-rnE', r'pickle\.(loads?|Unpickler)\(', root],
                         capture_output=True, text=True).stdout
    offenders = [line for line in out.splitlines()
                 if 'dataset_utils.py' not in line and '/engine/checkpoint.py' not in line]
    assert offenders == []


# ----------------------------------------------------------------------------- target checks

@pytest.mark.parametrize('segm,words', [
    ([[13, 11, 20, 11, 20, 18]], 'wholly outside the image'),
    ([[-8, -8, -1, -8, -1, -1]], 'wholly outside the image'),
    ([[1, 1, 5, 1, 2**40, 5]], 'far outside the image'),
    ([[1, 1, 2, 2, 3, 3]], 'enclose no area'),
    ([[1, 1, 5, 1]], 'at least 6'),
    (dict(size=[10, 12], counts='garbage'), 'invalid compressed RLE'),
    (dict(size=[10, 12], counts='0'), 'invalid compressed RLE'),
    (dict(size=[10, 12], counts=[120]), 'empty mask'),
])
def test_check_target_finds_targets_that_give_no_mask(segm, words):
    assert words in check_target(segm, 10, 12)


def test_check_target_accepts_partly_outside_polygons_and_valid_rle():
    assert check_target([[-5, -5, 4, -5, 4, 4, -5, 4]], 10, 12) is None
    rle = mask_utils.encode(np.asfortranarray(box_mask(10, 12, 2, 5, 3, 9).astype(np.uint8)))
    assert check_target(dict(size=[10, 12], counts=rle['counts'].decode()), 10, 12) is None


def test_rle_string_counts_match_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        mask = rng.random((h, w)) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        runs = rle_string_counts(rle['counts'].decode())
        assert sum(runs) == h * w and sum(runs[1::2]) == int(mask.sum())


def _muse_record(segm, height=20, width=24):
    return dict(id=5, file_name='img_0.png', height=height, width=width,
                questions=['Where is the box?', 'And the other?'],
                answers=[[dict(id=51, category_name='box', segmentation=segm)],
                         [dict(id=52, category_name='box',
                               segmentation=[[2, 2, 8, 2, 8, 8, 2, 8]])]])


def test_muse_polygon_outside_the_image_names_file_record_question_and_field(tmp_path):
    ann = tmp_path / 'muse.json'
    ann.write_text(json.dumps([_muse_record([[30, 25, 40, 25, 40, 35]])]))
    with pytest.raises(InvalidTargetError) as info:
        MUSEDataset(ann_file=str(ann), serialize_data=False)
    err = info.value
    assert err.record == "record 0 (id=5), question 0 'Where is the box?', target 0 (id=51)"
    assert err.field == 'answers[0][0].segmentation' and 'outside the image' in err.problem
    with captured_log_records() as records:
        dataset = MUSEDataset(ann_file=str(ann), serialize_data=False, skip_invalid_targets=True)
    assert dataset.get_data_info(0)['questions'] == ['And the other?']
    assert any('dropped 1 invalid target(s)' in r.getMessage() and 'id=51' in r.getMessage()
               for r in records)


def test_muse_invalid_rle_counts_are_refused_at_load(tmp_path):
    ann = tmp_path / 'muse.json'
    ann.write_text(json.dumps([_muse_record(dict(size=[20, 24], counts='bad!'))]))
    with pytest.raises(InvalidTargetError, match='invalid compressed RLE'):
        MUSEDataset(ann_file=str(ann), serialize_data=False)


def test_decode_target_masks_refuses_an_empty_mask_naming_the_question():
    # A polygon whose box overlaps the image but whose area does not: found when decoded.
    info = dict(_muse_record([[23.9, 0, 30, 0, 30, 30, 23.9, 30]]), targets=None,
                ann_file='muse.json', record_index=0, img_id=5, question_index=0,
                question='Where is the box?')
    info['targets'] = info['answers'][0]
    with pytest.raises(InvalidTargetError) as err:
        DecodeTargetMasks()(info)
    assert "question 0 'Where is the box?', target 0 (id=51)" in err.value.record
    assert 'empty mask' in str(err.value)


def test_refer_invalid_rle_counts_name_annotation_ref_and_expression(tmp_path):
    inst = instances()
    inst['annotations'][0]['segmentation'] = dict(size=[20, 30], counts='#$%')
    root = write_refer(tmp_path, refs(), inst=inst)
    with pytest.raises(InvalidTargetError) as info:
        ReferSegDataset(data_root=root, serialize_data=False)
    assert info.value.record == ("annotations[0] (id=11), a target of refs[0] (ref_id=100) "
                                 "'man on left'")
    assert 'invalid compressed RLE' in str(info.value)


def test_grefcoco_invalid_target_is_skipped_on_request(tmp_path):
    inst = instances()
    inst['annotations'][0]['segmentation'] = [[50, 50, 60, 50, 60, 60]]
    grefs = [dict(ref_id=0, ann_id=[11], image_id=1, split='train', sentences=sentences('a')),
             dict(ref_id=1, ann_id=[-1], image_id=1, split='train', no_target=True,
                  sentences=sentences('nothing', start=1))]
    root = write_refer(tmp_path, grefs, dataset='grefcoco', refs_name='grefs(unc).json',
                       inst=inst)
    with pytest.raises(InvalidTargetError, match='outside the image'):
        GRefCOCODataset(data_root=root, serialize_data=False)
    dataset = GRefCOCODataset(data_root=root, serialize_data=False, skip_invalid_targets=True)
    assert dataset.get_data_info(0)['questions'] == ['nothing']


def _reason_root(tmp_path, shapes, size=(16, 16), exif=None):
    folder = tmp_path / REASON / 'train'
    folder.mkdir(parents=True)
    image = Image.fromarray(np.full((size[0], size[1], 3), 120, dtype=np.uint8))
    if exif is None:
        image.save(folder / 'a.jpg')
    else:
        info = Image.Exif()
        info[0x0112] = exif
        image.save(folder / 'a.jpg', exif=info)
    (folder / 'a.json').write_text(json.dumps(labelme(['Find it'], False, shapes)))
    return str(tmp_path)


@pytest.mark.parametrize('points,words', [([[1, 1], [5, 5]], 'degenerate polygon of 2 point'),
                                          (rect(30, 30, 40, 40), 'wholly outside the image')])
def test_reason_seg_invalid_shapes_name_the_json_question_and_shape(tmp_path, points, words):
    root = _reason_root(tmp_path, [shape('target', rect(1, 1, 5, 5)), shape('target', points)])
    with pytest.raises(InvalidTargetError) as info:
        ReasonSegDataset(data_root=root, serialize_data=False)
    err = info.value
    assert err.file.endswith('train/a.json') and err.field == 'shapes[1].points'
    assert err.record == "record 0 (id=a), question 0 'Find it'" and words in err.problem
    with captured_log_records() as records:
        dataset = ReasonSegDataset(data_root=root, serialize_data=False,
                                   skip_invalid_targets=True, lazy_init=True)
        assert dataset.load_data_list() == []
    assert any('dropped 1 invalid target(s)' in r.getMessage() for r in records)


# ----------------------------------------------------------------------------- loader cases

def test_refclef_segmentation_as_a_list_of_compressed_rles_loads_as_its_union(tmp_path):
    # refCLEF's form: REFER's getMask decodes the list and sums it.
    top, bottom = box_mask(20, 30, 2, 6, 3, 9), box_mask(20, 30, 12, 16, 10, 20)
    parts = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (top, bottom)]
    inst = instances()
    inst['annotations'][0]['segmentation'] = [dict(size=[20, 30], counts=p['counts'].decode())
                                              for p in parts]
    root = write_refer(tmp_path, refs(), dataset='refclef', inst=inst,
                       image_dir='refer_seg/images/saiapr_tc-12')
    dataset = ReferSegDataset(dataset_name='refclef', data_root=root, serialize_data=False,
                              test_mode=True)
    masks = run([SampleReferPhrases(), DecodeTargetMasks()], dataset.get_data_info(0))['gt_masks']
    official = mask_utils.decode([dict(size=[20, 30], counts=p['counts']) for p in parts])
    assert np.array_equal(masks[0], official.sum(axis=2) > 0)
    assert np.array_equal(masks[0], top | bottom)


def test_grefcoco_crowd_objects_are_no_targets(tmp_path):
    # Annotations 12 and 14 of the fixture are crowd regions (iscrowd=1).
    grefs = [dict(ref_id=0, ann_id=[11, 12], image_id=1, split='val', no_target=False,
                  sentences=sentences('person and car')),
             dict(ref_id=1, ann_id=[14], image_id=2, split='val', no_target=False,
                  sentences=sentences('crowd', start=1)),
             dict(ref_id=2, ann_id=[13, 14], image_id=2, split='val', no_target=False,
                  sentences=sentences('dog', start=2))]
    root = write_refer(tmp_path, grefs, dataset='grefcoco', refs_name='grefs(unc).json')
    with captured_log_records() as records:
        dataset = GRefCOCODataset(data_root=root, split='val', test_mode=True,
                                  serialize_data=False)
    answers = {dataset.get_data_info(i)['questions'][0]: dataset.get_data_info(i)['answers'][0]
               for i in range(len(dataset))}
    assert {q: [t['id'] for t in a] for q, a in answers.items()} == {'person and car': [11],
                                                                     'dog': [13]}
    assert any('every object is a crowd region' in r.getMessage() for r in records)
    merged = GRefCOCODataset(data_root=root, split='val', test_mode=True, serialize_data=False,
                             merge_targets=True)
    info = merged.get_data_info(0)
    masks = run([SampleReferPhrases(), DecodeTargetMasks()], info)['gt_masks']
    assert np.array_equal(masks[0], ANN_MASKS[11])


@pytest.mark.parametrize('orientation', range(1, 9))
def test_apply_orientation_matches_pil_exif_transpose(orientation):
    array = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    image = Image.fromarray(array)
    info = Image.Exif()
    info[0x0112] = orientation
    image.info['exif'] = info.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    assert np.array_equal(apply_orientation(array, orientation), expected)
    assert np.array_equal(apply_orientation(array[..., 0], orientation), expected[..., 0])


def test_reason_seg_exif_image_is_read_upright_and_masks_drawn_at_that_size(tmp_path):
    # Stored 10 (H) x 16 (W) with orientation 6 (shown turned clockwise): upright 16 x 10.
    root = _reason_root(tmp_path, [shape('target', rect(1, 2, 4, 12))], size=(10, 16), exif=6)
    dataset = ReasonSegDataset(data_root=root, serialize_data=False, test_mode=True,
                               pipeline=[LoadImageFromFile(), SampleQuestion(),
                                         DecodeTargetMasks()])
    info = dataset.get_data_info(0)
    assert (info['height'], info['width']) == (16, 10)
    sample = dataset[0]
    assert sample['img'].shape == (16, 10, 3) and sample['gt_masks'].shape == (1, 16, 10)
    assert np.array_equal(sample['gt_masks'][0], box_mask(16, 10, 2, 13, 1, 5))


def test_coco_style_masks_are_turned_with_their_exif_image(tmp_path):
    # COCO-style records give the stored size; the mask turns with the image.
    stored = np.zeros((10, 16, 3), dtype=np.uint8)
    stored[1:4, 2:7] = 255
    info = Image.Exif()
    info[0x0112] = 8
    path = tmp_path / 'img.jpg'
    Image.fromarray(stored).save(path, exif=info, quality=100)
    results = dict(img_path=str(path), height=10, width=16, question_index=0,
                   targets=[dict(id=1, segmentation=[[2, 1, 7, 1, 7, 4, 2, 4]])])
    results = run([LoadImageFromFile(), DecodeTargetMasks()], results)
    assert results['img'].shape == (16, 10, 3) and results['gt_masks'].shape == (1, 16, 10)
    bright = results['img'][..., 0] > 128
    assert (results['gt_masks'][0] == bright).mean() > 0.95
