"""Score trivial predictors on a config's test split with the same metric as the model.

Predictors: every target empty, every target the full image, every target the union of all
objects in the image (COCO ``ann_list``). A model that learned anything must beat all three.

Usage: python tools/analysis/trivial_baselines.py CONFIG [--out FILE.json]
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def trivial_predictions(info, gt_masks):
    """Return ``{name: (N, H, W) bool}`` for the three trivial predictors of one question."""
    import numpy as np

    from pixellm.datasets.transforms.loading import decode_segmentation
    n, h, w = gt_masks.shape
    union = np.zeros((h, w), dtype=bool)
    for segm in info.get('all_segmentations', []):
        union |= decode_segmentation(segm, h, w).astype(bool)
    return dict(empty=np.zeros((n, h, w), dtype=bool), full=np.ones((n, h, w), dtype=bool),
                union_of_objects=np.repeat(union[None], n, axis=0))


def evaluate_baselines(dataset_cfg, metric_cfg=None):
    """Return ``{predictor: metrics}`` over every question of ``dataset_cfg``.

    ``metric_cfg`` is one metric config or a list of them (a config's ``test_evaluator``); the
    keys of a metric with a ``prefix`` are written ``prefix/key``, as the runner writes them, and
    two metrics reporting the same key are refused (mmengine's ``Evaluator`` does both).
    """
    import numpy as np
    import torch
    from mmengine.evaluator import Evaluator

    from pixellm.datasets.transforms.loading import decode_segmentation
    from pixellm.registry import DATASETS, METRICS
    metric_cfgs = metric_cfg or dict(type='ReasonSegMetric')
    if not isinstance(metric_cfgs, (list, tuple)):
        metric_cfgs = [metric_cfgs]
    cfg = dict(dataset_cfg)
    cfg['pipeline'] = []
    cfg['test_mode'] = True
    dataset = DATASETS.build(cfg)
    # mmengine's Evaluator, as the runner uses it: prefixed keys, and an error when two metrics
    # report the same key.
    evaluators = {}
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        q = info['question_index']
        h, w = info['height'], info['width']
        gt = np.stack([decode_segmentation(t['segmentation'], h, w).astype(bool)
                       for t in info['answers'][q]])
        for name, pred in trivial_predictions(info, gt).items():
            if name not in evaluators:
                evaluators[name] = Evaluator([METRICS.build(c) for c in metric_cfgs])
            evaluators[name].process([dict(gt_instances=dict(masks=torch.from_numpy(gt)),
                                           pred_instances=dict(masks=torch.from_numpy(pred)))])
    return {name: evaluator.evaluate(len(dataset)) for name, evaluator in evaluators.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('--out', help='write the results as json here')
    args = parser.parse_args()
    from mmengine.registry import init_default_scope
    init_default_scope('pixellm')
    import pixellm.datasets  # noqa: F401
    import pixellm.evaluation  # noqa: F401
    from pixellm.utils import load_config
    cfg = load_config(args.config)
    results = evaluate_baselines(cfg.test_dataloader.dataset, cfg.get('test_evaluator'))
    for name, res in results.items():
        scores = [f'{key} {res[key]:.4f}' for key in res if key.split('/')[-1] in ('gIoU', 'cIoU')]
        print(f'{name:<18} ' + '  '.join(scores))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
