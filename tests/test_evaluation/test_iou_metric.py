"""mmseg's IoUMetric as pixellm's: one class reached by ``type='IoUMetric'`` under the pixellm
scope, imported without mmseg's models, datasets or compiled ops."""
import os.path as osp
import subprocess
import sys
import textwrap

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_iou_metric_resolves_under_the_pixellm_scope_to_mmseg_class():
    from mmengine.registry import METRICS as ROOT_METRICS
    from mmengine.registry import DefaultScope
    from mmseg.evaluation import IoUMetric

    from pixellm.registry import METRICS
    assert DefaultScope.get_current_instance().scope_name == 'pixellm'
    assert METRICS.get('IoUMetric') is IoUMetric
    assert METRICS.get('mmseg.IoUMetric') is IoUMetric
    metric = ROOT_METRICS.build(dict(type='IoUMetric', iou_metrics=['mIoU'], ignore_index=7))
    assert type(metric) is IoUMetric and metric.ignore_index == 7


def test_registering_it_imports_no_mmseg_models_datasets_or_ops():
    code = textwrap.dedent('''
        import sys
        import pixellm
        assert not [m for m in sys.modules if m.split('.')[0] == 'mmseg'], 'import pixellm'
        import pixellm.evaluation
        from pixellm.registry import METRICS
        assert METRICS.get('IoUMetric') is not None
        heavy = [m for m in sys.modules if m.split('.')[:2] in (
            ['mmseg', 'models'], ['mmseg', 'datasets'], ['mmseg', 'utils'], ['mmcv', 'ops'])]
        assert not heavy, heavy
        print('light')
    ''')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == 'light'
