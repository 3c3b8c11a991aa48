"""Semantic/part segmentation datasets asked as questions: the five sources in their on-disk
formats (generated here), class sampling, label-map and instance masks, conversations, errors."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import captured_log_records
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.datasets import (ADE20KSemSegDataset, COCOStuffSemSegDataset, DatasetFormatError,
                              InvalidTargetError,
                              MapillarySemSegDataset, PACOLVISSemSegDataset,
                              PascalPartSemSegDataset)
from pixellm.datasets.transforms import (BuildReferConversation, DecodeTargetMasks,
                                         LoadImageFromFile, SampleSemSegTargets)
from pixellm.datasets.transforms.refer_conversation import (ONE_TARGET_ANSWER_TEMPLATES,
                                                            SHORT_QUESTION_TEMPLATES)
from pixellm.text.codebook_tokens import codebook_token_strings
from pixellm.text.tokenizers import build_tokenizer
from pixellm.structures import PixelLMDataSample

CODEBOOK = codebook_token_strings(2, 3)
TOKENIZER = dict(type='TinyTokenizer', extra_tokens=CODEBOOK)
# The default text processor: the tiny tokenizer (which gets CODEBOOK), a 2 x 3 codebook.
TEXT_PROCESSOR = dict(type='TextProcessor')
H, W = 12, 16


def write_image(path, h=H, w=W):
    """An RGB image (JPEG when the name says so); its pixels do not matter here."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_label_map(path, label, mode='L'):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), mode='L')
    if mode == 'P':
        img = img.convert('P')
        img.putdata(label.astype(np.uint8).ravel().tolist())
    img.save(path)


def quadrants(top_left, top_right, bottom_left, bottom_right):
    """A label map whose four quadrants hold the given values."""
    label = np.empty((H, W), dtype=np.uint8)
    label[:H // 2, :W // 2] = top_left
    label[:H // 2, W // 2:] = top_right
    label[H // 2:, :W // 2] = bottom_left
    label[H // 2:, W // 2:] = bottom_right
    return label


def rle_counts(mask):
    """Uncompressed COCO RLE of ``mask``, written here from its definition: column-major runs
    that start with a run of zeros."""
    flat = mask.T.ravel().astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def box(y0, y1, x0, x1, h=H, w=W):
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def run(transforms, results):
    for t in transforms:
        results = t(results)
        if results is None:
            return None
    return results


def targets_pipeline(per_question=3, per_sample=1):
    return [LoadImageFromFile(), SampleSemSegTargets(per_question, per_sample), DecodeTargetMasks(),
            BuildReferConversation()]


def full_pipeline():
    return [
        dict(type='LoadImageFromFile'),
        dict(type='SampleSemSegTargets', num_classes_per_question=3),
        dict(type='DecodeTargetMasks'),
        dict(type='BuildReferConversation', use_expand_question_list=True),
        dict(type='ExpandSegTokens', text_processor=TEXT_PROCESSOR),
        dict(type='TokenizeConversation', text_processor=TEXT_PROCESSOR, max_length=512),
        dict(type='ResizeLongestSide', size=32),
        dict(type='PackPixelLMInputs'),
    ]


# ----------------------------------------------------------------------------- fixtures

# ADE20K: 1 wall, 2 building, 3 sky, 4 floor (the shipped official list); 0 and 255 ignored.
ADE_LABEL = quadrants(1, 3, 0, 255)


@pytest.fixture
def ade_root(tmp_path):
    write_image(tmp_path / 'ade20k/images/training/ADE_train_1.jpg')
    write_label_map(tmp_path / 'ade20k/annotations/training/ADE_train_1.png', ADE_LABEL)
    return tmp_path


# COCO-Stuff values: 0 person, 2 car, 170 wall-brick (a '-' class, ignored), 255 unlabeled.
STUFF_LABEL = quadrants(0, 2, 170, 255)


@pytest.fixture
def stuff_root(tmp_path):
    write_image(tmp_path / 'coco/train2017/000000000009.jpg')
    write_label_map(tmp_path / 'cocostuff/train2017/000000000009.png', STUFF_LABEL)
    return tmp_path


MAPILLARY_CONFIG = dict(labels=[
    dict(name='animal--bird', readable='Bird', color=[165, 42, 42], instances=True),
    dict(name='construction--flat--road', readable='Road', color=[128, 64, 128]),
    dict(name='nature--sky', readable='Sky', color=[70, 130, 180]),
    dict(name='void--unlabeled', readable='Unlabeled', color=[0, 0, 0]),
], version='2.0')
MAPILLARY_LABEL = quadrants(2, 2, 1, 3)


@pytest.fixture
def mapillary_root(tmp_path):
    (tmp_path / 'mapillary').mkdir()
    (tmp_path / 'mapillary/config_v2.0.json').write_text(json.dumps(MAPILLARY_CONFIG))
    write_image(tmp_path / 'mapillary/training/images/m1.jpg')
    write_label_map(tmp_path / 'mapillary/training/v2.0/labels/m1.png', MAPILLARY_LABEL,
                    mode='P')
    return tmp_path


# PACO-LVIS: a polygon (rows 1..4, columns 2..6), an uncompressed and a compressed RLE.
RIM_MASK = box(6, 10, 1, 9)
LID_MASK = box(0, 12, 12, 15)


def paco_json():
    compressed = mask_utils.encode(np.asfortranarray(LID_MASK.astype(np.uint8)))
    return dict(
        images=[dict(id=1, file_name='train2017/000000000001.jpg', height=H, width=W),
                dict(id=2, file_name='train2017/000000000002.jpg', height=H, width=W)],
        categories=[dict(id=10, name='dog'), dict(id=20, name='bowl_(dish):rim'),
                    dict(id=30, name='trash_can:lid')],
        annotations=[
            dict(id=100, image_id=1, category_id=10, segmentation=[[2, 1, 7, 1, 7, 5, 2, 5]]),
            dict(id=101, image_id=1, category_id=20,
                 segmentation=dict(size=[H, W], counts=rle_counts(RIM_MASK))),
            dict(id=102, image_id=1, category_id=30,
                 segmentation=dict(size=[H, W], counts=compressed['counts'].decode('ascii'))),
        ])


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.fixture
def paco_root(tmp_path):
    write_json(tmp_path / 'vlpart/paco/annotations/paco_lvis_v1_train.json', paco_json())
    write_image(tmp_path / 'coco/train2017/000000000001.jpg')
    return tmp_path


@pytest.fixture
def pascal_root(tmp_path):
    write_json(tmp_path / 'vlpart/pascal_part/train.json', dict(
        images=[dict(id=5, file_name='2008_000005.jpg', height=H, width=W)],
        categories=[dict(id=1, name='dog:head'), dict(id=2, name='cat:tail')],
        annotations=[dict(id=7, image_id=5, category_id=2,
                          segmentation=dict(size=[H, W], counts=rle_counts(RIM_MASK)))]))
    write_image(tmp_path / 'vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/2008_000005.jpg')
    return tmp_path


# ----------------------------------------------------------------------------- label maps


def test_ade20k_masks_are_the_pixels_of_each_present_class(ade_root):
    dataset = ADE20KSemSegDataset(data_root=str(ade_root))
    assert len(dataset) == 1 and dataset.metainfo['classes'][:3] == ('wall', 'building', 'sky')
    info = dataset.get_data_info(0)
    assert info['img_path'] == osp.join(str(ade_root), 'ade20k/images/training/ADE_train_1.jpg')
    assert info['seg_map_path'].endswith('ade20k/annotations/training/ADE_train_1.png')
    np.random.seed(0)
    results = run(targets_pipeline(), info)
    names = [t['category_name'] for t in results['targets']]
    assert sorted(names) == ['sky', 'wall'] and results['num_targets'] == 2
    expected = {'wall': ADE_LABEL == 1, 'sky': ADE_LABEL == 3}
    masks = results['gt_masks']
    assert masks.dtype == bool and masks.shape == (2, H, W)
    for name, mask in zip(names, masks):
        assert np.array_equal(mask, expected[name])
    # Ignore pixels (0 and 255) are in no mask.
    assert not masks.any(0)[H // 2:].any()
    assert all(name in results['question'] for name in names)
    assert results['answer'].count('{seg}') == 2


def test_label_map_read_once_per_sample(ade_root, monkeypatch):
    from pixellm.datasets.transforms import loading, sem_seg_sampling
    info = ADE20KSemSegDataset(data_root=str(ade_root)).get_data_info(0)
    calls = []
    real = loading.load_label_map

    def counting(path, results):
        calls.append(path)
        return real(path, results)

    monkeypatch.setattr(loading, 'load_label_map', counting)
    monkeypatch.setattr(sem_seg_sampling, 'load_label_map', counting)
    run(targets_pipeline(), info)
    assert len(calls) == 1


def test_decode_label_map_target_without_sampler_reads_the_file(ade_root):
    path = str(ade_root / 'ade20k/annotations/training/ADE_train_1.png')
    targets = [dict(category_name='sky', seg_map_path=path, label_values=[3]),
               dict(category_name='wall or sky', seg_map_path=path, label_values=[1, 3])]
    results = DecodeTargetMasks()(dict(targets=targets, ori_shape=(H, W)))
    assert np.array_equal(results['gt_masks'][0], ADE_LABEL == 3)
    assert np.array_equal(results['gt_masks'][1], (ADE_LABEL == 1) | (ADE_LABEL == 3))


def test_cocostuff_ignores_dash_classes_and_unlabeled(stuff_root):
    dataset = COCOStuffSemSegDataset(data_root=str(stuff_root))
    classes = dataset.metainfo['classes']
    assert classes[:3] == ('person', 'bicycle', 'car')
    assert 'wall-brick' not in classes and all('-' not in c for c in classes)
    info = dataset.get_data_info(0)
    assert info['img_path'].endswith('coco/train2017/000000000009.jpg')
    for seed in range(5):
        np.random.seed(seed)
        results = run(targets_pipeline(), dataset.get_data_info(0))
        names = [t['category_name'] for t in results['targets']]
        assert sorted(names) == ['car', 'person']
        for name, mask in zip(names, results['gt_masks']):
            assert np.array_equal(mask, STUFF_LABEL == {'person': 0, 'car': 2}[name])


def test_mapillary_names_from_config_and_palette_label_map(mapillary_root):
    dataset = MapillarySemSegDataset(data_root=str(mapillary_root))
    assert dataset.metainfo['classes'] == ('bird', 'road', 'sky', 'unlabeled')
    info = dataset.get_data_info(0)
    assert info['img_path'].endswith('mapillary/training/images/m1.jpg')
    with Image.open(info['seg_map_path']) as pil:
        assert pil.mode == 'P'
    np.random.seed(0)
    results = run(targets_pipeline(), info)
    names = [t['category_name'] for t in results['targets']]
    assert sorted(names) == ['road', 'sky', 'unlabeled']
    values = dict(road=1, sky=2, unlabeled=3)
    for name, mask in zip(names, results['gt_masks']):
        assert np.array_equal(mask, MAPILLARY_LABEL == values[name])


def test_label_map_with_only_ignore_pixels_is_skipped_and_another_drawn(ade_root):
    write_image(ade_root / 'ade20k/images/training/ADE_train_0.jpg')
    write_label_map(ade_root / 'ade20k/annotations/training/ADE_train_0.png',
                    quadrants(0, 0, 255, 0))
    dataset = ADE20KSemSegDataset(data_root=str(ade_root), pipeline=[
        dict(type='LoadImageFromFile'), dict(type='SampleSemSegTargets')])
    assert dataset.get_data_info(0)['img_id'] == 'ADE_train_0'
    with captured_log_records() as records:
        sample = dataset[0]
        dataset[0]
    assert sample['img_id'] == 'ADE_train_1'
    skips = [r.getMessage() for r in records if 'no class to ask about' in r.getMessage()]
    assert len(skips) == 1 and 'ADE_train_0.png' in skips[0]


def test_unknown_label_value_names_file_record_and_value(ade_root):
    write_label_map(ade_root / 'ade20k/annotations/training/ADE_train_1.png',
                    quadrants(1, 200, 0, 0))
    info = ADE20KSemSegDataset(data_root=str(ade_root)).get_data_info(0)
    with pytest.raises(DatasetFormatError) as err:
        run(targets_pipeline(), info)
    assert err.value.file.endswith('ADE_train_1.png')
    assert err.value.record == 'ADE20K record 0 (id=ADE_train_1)'
    assert err.value.field == 'seg_map_path'
    assert 'label value 200' in str(err.value)


def test_label_map_size_mismatch_names_both_sizes(ade_root):
    write_label_map(ade_root / 'ade20k/annotations/training/ADE_train_1.png',
                    np.ones((H, W + 1), np.uint8))
    info = ADE20KSemSegDataset(data_root=str(ade_root)).get_data_info(0)
    with pytest.raises(DatasetFormatError) as err:
        run(targets_pipeline(), info)
    assert err.value.file.endswith('ADE_train_1.png') and err.value.field == 'seg_map_path'
    assert 'record 0 (id=ADE_train_1)' in err.value.record
    assert f'{H}x{W + 1}' in str(err.value) and f'{H}x{W}' in str(err.value)


def test_rgb_label_map_is_rejected(ade_root):
    write_image(ade_root / 'ade20k/annotations/training/ADE_train_1.png')
    info = ADE20KSemSegDataset(data_root=str(ade_root)).get_data_info(0)
    with pytest.raises(DatasetFormatError, match="PIL mode 'RGB'"):
        run(targets_pipeline(), info)


def test_missing_folder_names_the_path_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        ADE20KSemSegDataset(data_root=str(tmp_path))
    message = str(err.value)
    assert 'ADE20KSemSegDataset' in message and 'ade20k/images/training' in message
    assert 'layout' in message


def test_label_map_without_image_names_the_record(stuff_root):
    write_label_map(stuff_root / 'cocostuff/train2017/000000000010.png', STUFF_LABEL)
    with pytest.raises(FileNotFoundError) as err:
        COCOStuffSemSegDataset(data_root=str(stuff_root))
    message = str(err.value)
    assert 'COCO-Stuff record 1 (id=000000000010)' in message
    assert 'coco/train2017/000000000010.jpg' in message


def test_empty_label_folder_is_an_error(stuff_root):
    (stuff_root / 'cocostuff/train2017/000000000009.png').unlink()
    with pytest.raises(DatasetFormatError, match=r'no "\*\.png" file'):
        COCOStuffSemSegDataset(data_root=str(stuff_root))


def test_mapillary_config_errors_name_label_and_field(mapillary_root):
    config = json.loads(json.dumps(MAPILLARY_CONFIG))
    del config['labels'][1]['readable']
    (mapillary_root / 'mapillary/config_v2.0.json').write_text(json.dumps(config))
    with pytest.raises(DatasetFormatError) as err:
        MapillarySemSegDataset(data_root=str(mapillary_root))
    assert err.value.file.endswith('config_v2.0.json')
    assert err.value.record == 'Mapillary Vistas labels[1]' and err.value.field == 'readable'


def test_cocostuff_malformed_class_list_names_the_line(stuff_root):
    (stuff_root / 'classes.txt').write_text('0: unlabeled\n1: person\ncar\n')
    with pytest.raises(DatasetFormatError) as err:
        COCOStuffSemSegDataset(data_root=str(stuff_root), class_file='classes.txt')
    assert err.value.file.endswith('classes.txt') and err.value.record == 'COCO-Stuff line 3'


# ----------------------------------------------------------------------------- COCO-format parts


def test_paco_instances_masks_and_part_names(paco_root):
    dataset = PACOLVISSemSegDataset(data_root=str(paco_root))
    # Image 2 has no annotation: skipped.
    assert len(dataset) == 1
    info = dataset.get_data_info(0)
    assert info['img_path'] == osp.join(str(paco_root), 'coco/train2017/000000000001.jpg')
    by_id = {inst['id']: inst for inst in info['instances']}
    assert by_id[100]['category_name'] == 'dog'
    assert (by_id[101]['object_name'], by_id[101]['part_name']) == ('bowl', 'rim')
    assert (by_id[102]['object_name'], by_id[102]['part_name']) == ('trash_can', 'lid')
    expected = {100: box(1, 5, 2, 7), 101: RIM_MASK, 102: LID_MASK}
    forms = set()
    for seed in range(12):
        np.random.seed(seed)
        results = run(targets_pipeline(), dataset.get_data_info(0))
        assert results['num_targets'] == 3
        for target, mask in zip(results['targets'], results['gt_masks']):
            assert np.array_equal(mask, expected[target['id']])
        question = results['question']
        assert 'dog' in question
        forms.add('bowl rim' in question)
        assert 'bowl rim' in question or 'the rim of the bowl' in question
        assert 'trash_can lid' in question or 'the lid of the trash_can' in question
    assert forms == {True, False}


def test_paco_skip_is_logged_with_a_count(paco_root):
    with captured_log_records() as records:
        PACOLVISSemSegDataset(data_root=str(paco_root))
    assert any('1 of 2 images' in r.getMessage() for r in records)


def test_paco_degenerate_polygons_are_dropped_and_an_annotation_of_only_those_is_invalid(paco_root):
    data = paco_json()
    # Annotation 100 keeps its good polygon; 101 has only a 2-point one and is skipped.
    good = data['annotations'][0]['segmentation'][0]
    data['annotations'][0]['segmentation'] = [good, [1, 1, 2, 2]]
    data['annotations'][1]['segmentation'] = [[1, 1, 2, 2]]
    write_json(paco_root / 'vlpart/paco/annotations/paco_lvis_v1_train.json', data)
    with pytest.raises(InvalidTargetError, match=r'annotations\[1\] \(id=101\): field '
                       r'.segmentation.: only degenerate polygons'):
        PACOLVISSemSegDataset(data_root=str(paco_root))
    with captured_log_records() as records:
        dataset = PACOLVISSemSegDataset(data_root=str(paco_root), skip_invalid_targets=True)
    assert any('dropped 1 invalid target(s)' in r.getMessage() and 'id=101' in r.getMessage()
               and 'degenerate' in r.getMessage() for r in records)
    by_id = {inst['id']: inst for inst in dataset.get_data_info(0)['instances']}
    assert sorted(by_id) == [100, 102] and by_id[100]['segmentation'] == [good]


def test_pascal_part_image_path_and_names(pascal_root):
    dataset = PascalPartSemSegDataset(data_root=str(pascal_root))
    assert dataset.metainfo['classes'] == ('dog:head', 'cat:tail')
    info = dataset.get_data_info(0)
    assert info['img_path'].endswith('vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/'
                                     '2008_000005.jpg')
    np.random.seed(1)
    results = run(targets_pipeline(), info)
    assert np.array_equal(results['gt_masks'][0], RIM_MASK)
    assert 'cat tail' in results['question'] or 'the tail of the cat' in results['question']


@pytest.mark.parametrize('edit, record, field, text', [
    (lambda d: d['annotations'][1].update(category_id=99),
     'PACO-LVIS annotations[1] (id=101)', 'category_id', 'unknown class id 99'),
    (lambda d: d['annotations'][2].update(image_id=7),
     'PACO-LVIS annotations[2] (id=102)', 'image_id', 'unknown image id 7'),
    (lambda d: d['annotations'][0].update(segmentation=[['1', 2, 3, 4, 5, 6]]),
     'PACO-LVIS annotations[0] (id=100)', 'segmentation', 'polygon 0 must be a flat list'),
    (lambda d: d['annotations'].clear(), 'PACO-LVIS file', 'annotations', 'empty'),
    (lambda d: d['categories'].append(dict(id=40, name='a:b:c')),
     'PACO-LVIS categories[3]', 'name', 'object:part'),
    (lambda d: d['images'][0].pop('height'),
     'PACO-LVIS images[0] (id=1)', 'height', 'positive integer'),
])
def test_paco_errors_name_file_record_and_field(paco_root, edit, record, field, text):
    data = paco_json()
    edit(data)
    ann_file = paco_root / 'vlpart/paco/annotations/paco_lvis_v1_train.json'
    write_json(ann_file, data)
    with pytest.raises(DatasetFormatError) as err:
        PACOLVISSemSegDataset(data_root=str(paco_root))
    assert err.value.file == str(ann_file)
    assert err.value.record == record and err.value.field == field
    assert text in str(err.value)


def test_missing_annotation_file_names_the_path(tmp_path):
    (tmp_path / 'coco').mkdir()
    with pytest.raises(FileNotFoundError, match='vlpart/paco/annotations/paco_lvis_v1_train.json'):
        PACOLVISSemSegDataset(data_root=str(tmp_path))


# ----------------------------------------------------------------------------- sampling and text


def many_classes_info(tmp_path, values):
    label = np.zeros((H, W), np.uint8)
    for k, value in enumerate(values):
        label[:, k] = value
    write_image(tmp_path / 'ade20k/images/training/x.jpg')
    write_label_map(tmp_path / 'ade20k/annotations/training/x.png', label)
    return ADE20KSemSegDataset(data_root=str(tmp_path)).get_data_info(0), label


def test_sampling_draws_present_classes_only_up_to_the_limit(tmp_path):
    present = [1, 2, 3, 4, 5]  # wall, building, sky, floor, tree
    info, label = many_classes_info(tmp_path, present)
    names = {'wall', 'building', 'sky', 'floor', 'tree'}
    sampler = SampleSemSegTargets(num_classes_per_question=3, num_classes_per_sample=1)
    seen = set()
    for seed in range(20):
        np.random.seed(seed)
        results = run([LoadImageFromFile(), sampler, DecodeTargetMasks()], dict(info))
        drawn = [t['category_name'] for t in results['targets']]
        assert len(drawn) == 3 and len(set(drawn)) == 3 and set(drawn) <= names
        for target, mask in zip(results['targets'], results['gt_masks']):
            assert np.array_equal(mask, label == target['label_values'][0])
        seen.update(drawn)
    assert seen == names


def test_official_allocation_sets_the_number_of_classes_per_question(tmp_path):
    info, _ = many_classes_info(tmp_path, [1, 2, 3])
    sampler = SampleSemSegTargets(num_classes_per_question=3, num_classes_per_sample=3)
    for seed in range(10):
        np.random.seed(seed)
        # Three present classes spread over three questions: one class each.
        assert run([LoadImageFromFile(), sampler], dict(info))['num_targets'] == 1
    info, _ = many_classes_info(tmp_path, list(range(1, 11)))
    counts = set()
    for seed in range(10):
        np.random.seed(seed)
        counts.add(run([LoadImageFromFile(), sampler], dict(info))['num_targets'])
    assert counts == {3}


def test_conversation_asks_for_the_drawn_names_with_the_official_forms(tmp_path):
    info, _ = many_classes_info(tmp_path, [1])
    one = run([LoadImageFromFile(), SampleSemSegTargets(), BuildReferConversation()], info)
    user = one['conversation'][0]['content']
    assert user.startswith('<image>\n')
    assert user[len('<image>\n'):] in [t.format(class_name='wall')
                                        for t in SHORT_QUESTION_TEMPLATES]
    assert one['answer'] in [t.format(seg='{seg}') for t in ONE_TARGET_ANSWER_TEMPLATES]
    assert one['conversation'][1] == dict(role='assistant', content=one['answer'])
    info, _ = many_classes_info(tmp_path, [1, 3, 7])  # wall, sky, road
    answers = set()
    for seed in range(40):
        np.random.seed(seed)
        three = run([LoadImageFromFile(), SampleSemSegTargets(3, 1), BuildReferConversation()],
                    dict(info))
        names = [t['category_name'] for t in three['targets']]
        assert three['question'] == ', '.join(names[:2]) + ' and ' + names[2]
        assert three['question'] in three['conversation'][0]['content']
        assert three['answer'].count('{seg}') == 3
        answers.add(three['answer'].replace(names[0], 'A').replace(names[1], 'B')
                    .replace(names[2], 'C'))
    # Both official forms occur: one clause per class and one sentence for all.
    assert 'A is {seg}, B is {seg} and C is {seg}.' in answers
    assert 'They are {seg}, {seg} and {seg}.' in answers


# ----------------------------------------------------------------------------- full pipeline


@pytest.mark.parametrize('source', ['ade20k', 'cocostuff', 'mapillary', 'paco', 'pascal_part'])
def test_each_source_reaches_pack_inputs(source, request):
    dataset_cls, root_fixture = dict(
        ade20k=(ADE20KSemSegDataset, 'ade_root'), cocostuff=(COCOStuffSemSegDataset, 'stuff_root'),
        mapillary=(MapillarySemSegDataset, 'mapillary_root'),
        paco=(PACOLVISSemSegDataset, 'paco_root'),
        pascal_part=(PascalPartSemSegDataset, 'pascal_root'))[source]
    root = request.getfixturevalue(root_fixture)
    np.random.seed(0)
    dataset = dataset_cls(data_root=str(root), pipeline=full_pipeline())
    packed = dataset[0]
    sample = packed['data_samples']
    assert isinstance(sample, PixelLMDataSample)
    assert tuple(packed['inputs'].shape) == (3, 24, 32)
    masks = sample.gt_instances.masks
    assert masks.dtype == torch.bool and tuple(masks.shape[1:]) == (H, W)
    assert len(masks) == sample.num_targets >= 1 and masks.flatten(1).any(1).all()
    assert sample.answer.count(CODEBOOK[0]) == sample.num_targets
    tokenizer = build_tokenizer(TOKENIZER)
    seg0 = tokenizer.convert_tokens_to_ids(CODEBOOK[0])
    assert int((sample.input_ids == seg0).sum()) == sample.num_targets
