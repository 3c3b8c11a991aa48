"""MUSEDataset: reading the MUSE json, image paths, train/test items and load-time validation."""
import copy
import json
import os.path as osp

import pytest

from pixellm.datasets import DatasetFormatError, MUSEDataset
from pixellm.registry import DATASETS

TINY = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'data', 'muse_tiny')
TINY_ANN = osp.join(TINY, 'muse_tiny.json')
# Record 1 of the fixture names a COCO 2017 image by coco_url.
TINY_PREFIX = dict(img_path='images', train2017_img_path='images')


def load_tiny_records():
    with open(TINY_ANN) as f:
        return json.load(f)


def write_records(tmp_path, records, name='muse.json'):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


def tiny_dataset(**kwargs):
    kwargs.setdefault('ann_file', 'muse_tiny.json')
    return MUSEDataset(data_root=TINY, data_prefix=TINY_PREFIX, **kwargs)


def test_train_mode_gives_one_item_per_image():
    dataset = DATASETS.build(dict(type='MUSEDataset', data_root=TINY, ann_file='muse_tiny.json',
                                  data_prefix=TINY_PREFIX))
    assert len(dataset) == 2
    first, second = dataset.get_data_info(0), dataset.get_data_info(1)
    assert first['img_path'] == osp.join(TINY, 'images', 'img_0.png')
    assert first['img_path_field'] == 'file_name'
    assert (first['img_id'], first['record_index'], first['height'], first['width']) == \
        (7, 0, 20, 24)
    assert first['ann_file'] == TINY_ANN
    assert first['questions'] == ['Segment the square and the blob.',
                                  'Which object is on the right?']
    assert [len(a) for a in first['answers']] == [2, 1]
    assert first['text_answers'] == ['The square is {seg} and the blob is {seg}.', 'It is {seg}.']
    assert 'question_index' not in first
    # Only what the pipeline reads is kept from an instance annotation.
    assert set(first['answers'][0][0]) == {'id', 'category_id', 'category_name',
                                          'rephrased_name', 'segmentation'}
    # A record without text_answers gets one None per question: its answer will be composed.
    assert second['text_answers'] == [None]
    assert second['img_path'] == osp.join(TINY, 'images', '000000000123.png')
    assert second['img_path_field'] == 'coco_url'


def test_test_mode_gives_one_item_per_question_in_file_order():
    dataset = tiny_dataset(test_mode=True)
    items = [dataset.get_data_info(i) for i in range(len(dataset))]
    assert [(it['record_index'], it['question_index']) for it in items] == \
        [(0, 0), (0, 1), (1, 0)]


def test_image_paths_follow_the_official_layout_by_default(tmp_path):
    records = load_tiny_records()
    records.append(dict(records[1], id=5,
                        coco_url='http://images.cocodataset.org/val2017/000000000005.jpg'))
    ann = write_records(tmp_path, records)
    dataset = MUSEDataset(ann_file=ann, data_root=str(tmp_path))
    paths = [dataset.get_data_info(i)['img_path'] for i in range(3)]
    coco = osp.join(str(tmp_path), 'refer_seg', 'images', 'mscoco', 'images')
    assert paths == [osp.join(coco, 'train2014', 'img_0.png'),
                     osp.join(coco, 'train2017', '000000000123.png'),
                     osp.join(coco, 'val2017', '000000000005.jpg')]


def test_lazy_init_defers_reading_and_unserialized_matches():
    lazy = tiny_dataset(lazy_init=True)
    assert not lazy._fully_initialized
    assert len(lazy) == 2 and lazy._fully_initialized
    plain = tiny_dataset(serialize_data=False)
    assert plain.get_data_info(1) == tiny_dataset().get_data_info(1)


def test_text_answers_make_category_name_optional(tmp_path):
    records = load_tiny_records()
    for inst in records[0]['answers'][0] + records[0]['answers'][1]:
        inst.pop('category_name')
    dataset = MUSEDataset(ann_file=write_records(tmp_path, records), data_root=TINY,
                          data_prefix=TINY_PREFIX)
    assert len(dataset) == 2


def test_missing_annotation_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.json'):
        MUSEDataset(ann_file='nope.json', data_root=str(tmp_path))


def test_malformed_json_reports_line_and_column(tmp_path):
    path = tmp_path / 'broken.json'
    path.write_text('[\n  {"id": 1,,\n  "height": 2}\n]')
    with pytest.raises(DatasetFormatError) as info:
        MUSEDataset(ann_file=str(path))
    assert info.value.file == str(path)
    assert info.value.field == '<json>'
    assert 'line 2, column 12' in str(info.value)


def test_top_level_must_be_a_list(tmp_path):
    ann = write_records(tmp_path, {'images': []})
    with pytest.raises(DatasetFormatError, match='json list of per-image records'):
        MUSEDataset(ann_file=ann)


def _set(path, value):
    """Mutation setting ``records[...]`` at ``path`` (a tuple of keys) to ``value``."""
    def apply(records):
        target = records
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


def _delete(path):
    def apply(records):
        target = records
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return apply


def _drop_image_keys(records):
    records[1].pop('coco_url')


BAD_RECORDS = [
    # (mutation, record named in the error, field, words in the problem)
    (_delete((1, 'questions')), 'record 1 (id=123)', 'questions', 'missing'),
    (_delete((0, 'answers')), 'record 0 (id=7)', 'answers', 'missing'),
    (_drop_image_keys, 'record 1 (id=123)', 'file_name', 'coco_url'),
    (_delete((0, 'height')), 'record 0 (id=7)', 'height', 'missing'),
    (_set((0, 'width'), 0), 'record 0 (id=7)', 'width', 'positive integer'),
    (_set((0, 'questions'), []), 'record 0 (id=7)', 'questions', 'at least one question'),
    (_set((0, 'questions', 1), 3), 'record 0 (id=7)', 'questions[1]', 'non-empty string'),
    (_set((0, 'answers'), [[]]), 'record 0 (id=7)', 'answers', '1 entries for 2 questions'),
    (_set((0, 'text_answers'), ['It is {seg}.']), 'record 0 (id=7)', 'text_answers',
     '1 entries for 2 questions'),
    (_set((0, 'text_answers', 1), 'It is {seg} and {seg}.'), 'record 0 (id=7)',
     'text_answers[1]', 'more {seg} than instances: 2 {seg} for 1 instances'),
    (_set((0, 'text_answers', 0), 'The square is {seg}.'), 'record 0 (id=7)', 'text_answers[0]',
     'fewer {seg} than instances: 1 {seg} for 2 instances'),
    (_set((0, 'answers', 1), []), 'record 0 (id=7)', 'answers[1]', 'at least one target'),
    (_delete((0, 'answers', 0, 1, 'segmentation')), 'record 0 (id=7)',
     'answers[0][1].segmentation', 'missing'),
    (_set((0, 'answers', 1, 0, 'segmentation', 'size'), [20, 25]), 'record 0 (id=7)',
     'answers[1][0].segmentation', 'mask size [20, 25]'),
    (_set((0, 'answers', 0, 1, 'segmentation', 'counts'), [5, 5]), 'record 0 (id=7)',
     'answers[0][1].segmentation', 'sum to 10'),
    (_set((0, 'answers', 0, 0, 'segmentation'), [[1, 2, 3, 4]]), 'record 0 (id=7)',
     'answers[0][0].segmentation', 'at least 6'),
    (_set((0, 'answers', 0, 0, 'segmentation'), []), 'record 0 (id=7)',
     'answers[0][0].segmentation', 'empty polygon list'),
    (_delete((1, 'answers', 0, 1, 'category_name')), 'record 1 (id=123)',
     'answers[0][1].category_name', 'compose the answer'),
]


@pytest.mark.parametrize('mutate,record,field,problem', BAD_RECORDS,
                         ids=[f'{case[2]}-{case[3][:20]}' for case in BAD_RECORDS])
def test_bad_record_raises_one_error_naming_file_record_and_field(tmp_path, mutate, record,
                                                                  field, problem):
    records = load_tiny_records()
    mutate(records)
    ann = write_records(tmp_path, records)
    with pytest.raises(DatasetFormatError) as info:
        MUSEDataset(ann_file=ann, data_root=TINY, data_prefix=TINY_PREFIX)
    err = info.value
    # A target's error names the question and the target after the record.
    assert (err.file, err.field) == (ann, field)
    assert err.record == record or err.record.startswith(f'{record}, question ')
    message = str(err)
    for part in (ann, record, repr(field), problem):
        assert part in message, (part, message)


def test_bad_record_is_reported_by_index_and_without_id(tmp_path):
    records = load_tiny_records()
    broken = copy.deepcopy(records[0])
    broken.pop('id')
    broken['text_answers'][1] = 'No {seg} {seg}.'
    ann = write_records(tmp_path, records + [broken])
    with pytest.raises(DatasetFormatError) as info:
        MUSEDataset(ann_file=ann, data_root=TINY, data_prefix=TINY_PREFIX)
    assert info.value.record == 'record 2'
