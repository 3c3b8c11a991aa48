"""DumpPredictions: every question's answer and masks as json, read back with pycocotools."""
import json

import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData
from pycocotools import mask as mask_utils

from pixellm.evaluation import DumpPredictions
from pixellm.structures import PixelLMDataSample

TOKENS = ('<s0>', '<s1>')


def _sample(question_index, text, masks, scores):
    sample = PixelLMDataSample(metainfo=dict(img_path=f'/data/img{question_index}.png',
                                             question='Where are the circles?',
                                             question_index=question_index, img_id=7,
                                             pred_text=text))
    sample.pred_instances = InstanceData(masks=torch.as_tensor(masks), scores=torch.tensor(scores))
    return sample


def test_items_hold_the_question_numbered_answer_labels_and_decodable_masks(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((2, 5, 7)) > 0.5
    out = tmp_path / 'sub' / 'dump.json'
    metric = DumpPredictions(str(out), codebook_tokens=TOKENS)
    metric.process(None, [
        _sample(0, 'The red circle <s0><s1> and the blue circle <s0> <s1>.', masks, [0.9, 0.4]),
        _sample(1, 'None here.', np.zeros((0, 5, 7), bool), []).to_dict()])
    assert metric.compute_metrics(metric.results) == {}
    first, second = json.load(open(out))
    assert first['question'] == 'Where are the circles?' and first['question_index'] == 0
    assert first['img_id'] == 7 and first['img_path'] == '/data/img0.png'
    assert first['answer'] == 'The red circle [1] and the blue circle [2].'
    assert first['raw_answer'].startswith('The red circle <s0><s1>')
    assert [t['label'] for t in first['targets']] == ['The red circle', 'the blue circle']
    assert [t['score'] for t in first['targets']] == pytest.approx([0.9, 0.4])
    for k, target in enumerate(first['targets']):
        rle = dict(size=target['segmentation']['size'],
                   counts=target['segmentation']['counts'].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), masks[k])
    assert second['targets'] == [] and second['answer'] == 'None here.'


def test_a_sample_without_the_question_is_named_in_the_error(tmp_path):
    sample = PixelLMDataSample(metainfo=dict(img_path='/data/x.png', pred_text='text'))
    with pytest.raises(KeyError, match=r"/data/x.png: DumpPredictions needs the metainfo "
                                       r"\['question'\]"):
        DumpPredictions(str(tmp_path / 'd.json')).process(None, [sample])


def test_only_json_files_are_written():
    with pytest.raises(ValueError, match='must be a .json file'):
        DumpPredictions('predictions.pkl')
