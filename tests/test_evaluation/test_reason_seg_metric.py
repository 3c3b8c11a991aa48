"""ReasonSegMetric on hand-computed examples, plus mmseg's IoUMetric for semantic-seg mIoU."""
import numpy as np
import pytest
import torch
from mmengine.evaluator import Evaluator
from mmengine.structures import InstanceData

from pixellm.evaluation import ReasonSegMetric
from pixellm.registry import METRICS
from pixellm.structures import PixelLMDataSample


def masks(*rows_list):
    """Build a (N, 4, 4) bool tensor from N lists of '0'/'1' row strings."""
    return torch.tensor([[[c == '1' for c in row] for row in rows] for rows in rows_list],
                        dtype=torch.bool).reshape(len(rows_list), 4, 4)


E = ['0000'] * 4  # an empty 4x4 mask


def sample(gt, pred, img_path='img.jpg'):
    return dict(img_path=img_path, gt_instances=dict(masks=gt), pred_instances=dict(masks=pred))


def three_questions():
    """Questions with 1, 2 and 4 targets; (I, U) of each target noted beside it."""
    q1 = sample(
        masks(['1100', '1100', '0000', '0000']),  # I=4, U=6
        masks(['1110', '1110', '0000', '0000']), 'q1.jpg')
    q2 = sample(
        masks(['1111', '0000', '0000', '0000'],  # I=2, U=4
              E),  # empty target, empty prediction: I=0, U=0, IoU 1
        masks(['1100', '0000', '0000', '0000'], E), 'q2.jpg')
    q3 = sample(
        masks(['1000'] * 4,  # I=4, U=4
              ['0100'] * 4,  # I=0, U=8
              ['0000', '0000', '0011', '0011'],  # I=4, U=6
              ['1111', '0000', '0000', '0000']),  # no prediction: I=0, U=4
        masks(['1000'] * 4, ['0010'] * 4, ['0000', '0000', '0111', '0111']), 'q3.jpg')
    return [q1, q2, q3]


def test_hand_computed_three_questions():
    metric = ReasonSegMetric()
    metric.process({}, three_questions()[:2])
    metric.process({}, three_questions()[2:])
    result = metric.compute_metrics(metric.results)
    assert result['num_samples'] == 3
    assert result['num_targets'] == 7
    assert result['gIoU'] == pytest.approx((2 / 3 + 1 / 2 + 1 + 1 + 0 + 2 / 3 + 0) / 7)
    assert result['cIoU'] == pytest.approx(14 / 32)
    assert result['gIoU@1'] == pytest.approx(2 / 3)
    assert result['cIoU@1'] == pytest.approx(4 / 6)
    assert result['gIoU@2'] == pytest.approx(3 / 4)
    assert result['cIoU@2'] == pytest.approx(2 / 4)
    assert result['gIoU@4+'] == pytest.approx((1 + 0 + 2 / 3 + 0) / 4)
    assert result['cIoU@4+'] == pytest.approx(8 / 22)
    assert (result['num_samples@4+'], result['num_targets@4+']) == (1, 4)
    assert 'gIoU@3' not in result
    assert all(isinstance(v, (int, float)) for v in result.values())


def test_results_are_cpu_int64_statistics():
    metric = ReasonSegMetric()
    metric.process({}, three_questions())
    stored = metric.results[2]
    assert stored['num_gt'] == 4
    assert stored['intersections'].dtype == np.int64
    np.testing.assert_array_equal(stored['intersections'], [4, 0, 4, 0])
    np.testing.assert_array_equal(stored['unions'], [4, 8, 6, 4])


def test_through_evaluator_with_data_samples():
    data_samples = []
    for raw in three_questions():
        ds = PixelLMDataSample(metainfo=dict(img_path=raw['img_path']))
        ds.gt_instances = InstanceData(masks=raw['gt_instances']['masks'])
        ds.pred_instances = InstanceData(masks=raw['pred_instances']['masks'].to(torch.uint8))
        data_samples.append(ds)
    evaluator = Evaluator(METRICS.build(dict(type='ReasonSegMetric', prefix='muse_val')))
    evaluator.process(data_samples[:1])
    evaluator.process(data_samples[1:])
    result = evaluator.evaluate(3)
    assert result['muse_val/cIoU'] == pytest.approx(14 / 32)
    assert result['muse_val/num_targets'] == 7


def test_data_sample_objects_accepted_directly():
    raw = three_questions()[0]
    ds = PixelLMDataSample(metainfo=dict(img_path='q1.jpg'))
    ds.gt_instances = InstanceData(masks=raw['gt_instances']['masks'])
    ds.pred_instances = InstanceData(masks=raw['pred_instances']['masks'])
    metric = ReasonSegMetric()
    metric.process({}, [ds])
    assert metric.compute_metrics(metric.results)['gIoU'] == pytest.approx(2 / 3)


def swapped_question():
    gt = masks(['1100'] * 4, ['0011'] * 4)
    pred = masks(['0011'] * 4, ['1100'] * 4, ['1111'] * 4)
    return sample(gt, pred)


def test_order_vs_hungarian_matching():
    order = ReasonSegMetric(matching='order')
    order.process({}, [swapped_question()])
    result = order.compute_metrics(order.results)
    assert (result['gIoU'], result['cIoU'], result['num_targets']) == (0.0, 0.0, 2)

    hungarian = ReasonSegMetric(matching='hungarian')
    hungarian.process({}, [swapped_question()])
    result = hungarian.compute_metrics(hungarian.results)
    # The all-foreground third prediction (IoU 1/2 with each) loses to the exact matches.
    assert (result['gIoU'], result['cIoU'], result['num_targets']) == (1.0, 1.0, 2)


def test_hungarian_with_fewer_predictions_than_targets():
    gt = masks(['1100'] * 4, ['0011'] * 4)
    pred = masks(['0011'] * 4)
    metric = ReasonSegMetric(matching='hungarian')
    metric.process({}, [sample(gt, pred)])
    np.testing.assert_array_equal(metric.results[0]['intersections'], [0, 8])
    np.testing.assert_array_equal(metric.results[0]['unions'], [8, 8])


def test_extra_predictions_ignored_or_counted():
    gt = masks(['1100'] * 4)
    pred = masks(['1100'] * 4, ['0001'] * 4, E)
    ignored = ReasonSegMetric()
    ignored.process({}, [sample(gt, pred)])
    assert ignored.compute_metrics(ignored.results)['gIoU'] == 1.0

    counted = ReasonSegMetric(count_extra_preds=True)
    counted.process({}, [sample(gt, pred)])
    result = counted.compute_metrics(counted.results)
    # Extra 1 scores I=0, U=4; the empty extra scores I=0, U=0 (IoU 1), as the official code.
    assert result['num_targets'] == 3
    assert result['gIoU'] == pytest.approx((1 + 0 + 1) / 3)
    assert result['cIoU'] == pytest.approx(8 / 12)
    assert result['gIoU@1'] == result['gIoU']


def test_no_prediction_at_all_and_all_empty():
    gt = masks(['1100'] * 4, E)
    metric = ReasonSegMetric()
    metric.process({}, [sample(gt, torch.zeros(0, dtype=torch.bool))])
    result = metric.compute_metrics(metric.results)
    assert result['gIoU'] == pytest.approx(0.5)
    assert result['cIoU'] == 0.0

    empty = ReasonSegMetric()
    empty.process({}, [sample(masks(E), masks(E))])
    assert empty.compute_metrics(empty.results)['cIoU'] == 1.0

    nothing = ReasonSegMetric()
    nothing.process({}, [sample(torch.zeros(0, 4, 4, dtype=torch.bool),
                                torch.zeros(0, 4, 4, dtype=torch.bool))])
    result = nothing.compute_metrics(nothing.results)
    assert (result['num_samples'], result['num_targets'], result['gIoU']) == (1, 0, 0.0)


def test_bad_inputs_name_the_sample():
    metric = ReasonSegMetric()
    with pytest.raises(ValueError, match=r'q9.jpg: pred_instances.masks has shape \(1, 3, 3\)'):
        metric.process({}, [sample(masks(E), torch.zeros(1, 3, 3, dtype=torch.bool), 'q9.jpg')])
    with pytest.raises(ValueError, match='q9.jpg: pred_instances.masks must be binary'):
        metric.process({}, [sample(masks(E), torch.full((1, 4, 4), 0.7), 'q9.jpg')])
    with pytest.raises(KeyError, match='q9.jpg: the data sample has no pred_instances.masks'):
        metric.process({}, [dict(img_path='q9.jpg', gt_instances=dict(masks=masks(E)))])
    with pytest.raises(ValueError, match='matching'):
        ReasonSegMetric(matching='greedy')


def test_semantic_segmentation_miou_goes_through_mmseg():
    from mmseg.evaluation import IoUMetric

    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dict(classes=('background', 'foreground'))
    gt = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    metric.process({}, [dict(pred_sem_seg=dict(data=pred), gt_sem_seg=dict(data=gt))])
    result = metric.evaluate(1)
    # background: I=1, U=2; foreground: I=2, U=3; mmseg reports percentages.
    assert result['mIoU'] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2, abs=0.01)


def test_ignore_region_is_left_out_of_intersection_and_union():
    # Target: left half. Prediction: left three columns. Ignore: column 2 (where they differ)
    # and the top row. Counted pixels: rows 1-3 of columns 0, 1, 3.
    gt = masks(['1100'] * 4)
    pred = masks(['1110'] * 4)
    ignore = torch.tensor([[c == '1' for c in row]
                           for row in ['1111', '0010', '0010', '0010']])
    metric = ReasonSegMetric()
    metric.process({}, [dict(sample(gt, pred), gt_ignore=ignore)])
    plain = ReasonSegMetric()
    plain.process({}, [sample(gt, pred)])
    # With ignore: I = 6 (rows 1-3 x cols 0, 1), U = 6 -> 1.0; without: I = 8, U = 12.
    assert metric.compute_metrics(metric.results)['gIoU'] == pytest.approx(1.0)
    assert plain.compute_metrics(plain.results)['gIoU'] == pytest.approx(8 / 12)
    with pytest.raises(ValueError, match='gt_ignore has shape'):
        metric.process({}, [dict(sample(gt, pred), gt_ignore=ignore[:2])])
