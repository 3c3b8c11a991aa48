"""The demo is a project: the core knows nothing of it, and its configs reach it through
custom_imports alone."""
import os.path as osp
import subprocess
import sys
import textwrap

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
DEMO_COMPONENTS = ('CodebookContextHead', 'GroundingHead', 'PromptNormPixelDecoder',
                   'VisionEncoderPretrainer', 'RenderSemanticMap', 'SaveVisionEncoderHook')


def _run(code):
    proc = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_the_core_imports_and_registers_nothing_of_the_demo():
    out = _run(f'''
        import sys
        import pixellm, pixellm.apis, pixellm.datasets, pixellm.engine, pixellm.evaluation
        import pixellm.models, pixellm.visualization
        from pixellm.registry import HOOKS, MODELS, TRANSFORMS
        assert not [m for m in sys.modules if m.split('.')[0] == 'projects'], 'projects imported'
        for name in {DEMO_COMPONENTS!r}:
            assert all(r.get(name) is None for r in (MODELS, TRANSFORMS, HOOKS)), name
        print('clean')
    ''')
    assert out.strip().splitlines()[-1] == 'clean'


def test_the_demo_configs_build_through_custom_imports():
    out = _run('''
        import sys
        from mmengine.registry import init_default_scope
        from pixellm.registry import MODELS
        from pixellm.utils import load_config
        init_default_scope('pixellm')
        cfg = load_config('projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')
        assert 'projects.pixellm_tiny_demo.pixellm_tiny_demo' in sys.modules
        model = MODELS.build(cfg.model)
        print(type(model.pixel_decoder).__name__,
              ' '.join(type(h).__name__ for h in model.aux_heads))
        encoder = load_config('projects/pixellm_tiny_demo/configs/pixellm_tiny_demo_encoder.py')
        print(type(MODELS.build(encoder.model)).__name__)
    ''')
    assert out.strip().splitlines()[-2:] == [
        'PromptNormPixelDecoder CodebookContextHead GroundingHead', 'VisionEncoderPretrainer']
