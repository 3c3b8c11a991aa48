"""pixellm.engine.mmengine_fixes: nothing changes mmengine on import; each installed change still
reaches the upstream code it relies on (these tests fail first when mmengine or DeepSpeed move)."""
import inspect
import subprocess
import sys

from pixellm.engine import install_mmengine_fixes
from pixellm.engine.fsdp import FSDP_WRAP_POLICY, layer_wrap_policy

PROBE = '''
import pixellm, pixellm.engine, pixellm.models, pixellm.datasets, pixellm.apis
from pixellm.utils import register_all_modules
register_all_modules()
from mmengine.registry import FUNCTIONS, STRATEGIES
from mmengine.runner import CheckpointLoader
from mmengine._strategy import deepspeed
print(CheckpointLoader._get_checkpoint_loader('model.pth').__module__,
      deepspeed.register_deepspeed_optimizers.__module__,
      FUNCTIONS.get('pixellm_layer_wrap_policy'),
      'PixelLMDeepSpeedStrategy' in STRATEGIES.module_dict)
'''


def test_importing_pixellm_changes_nothing_in_mmengine():
    out = subprocess.run([sys.executable, '-c', PROBE], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1].split() == [
        'mmengine.runner.checkpoint', 'mmengine._strategy.deepspeed', 'None', 'False']


def test_safe_loader_replaces_the_local_scheme():
    from mmengine.runner import CheckpointLoader

    from pixellm.engine.checkpoint import _load_from_local
    install_mmengine_fixes()
    assert CheckpointLoader._get_checkpoint_loader('work_dirs/iter_2.pth') is _load_from_local
    assert CheckpointLoader._get_checkpoint_loader('https://x/y.pth') is not _load_from_local


def test_fsdp_wrapper_finds_the_wrap_policy_by_name():
    from mmengine.model.wrappers import fully_sharded_distributed
    from mmengine.registry import FUNCTIONS
    assert 'FUNCTIONS.get' in inspect.getsource(fully_sharded_distributed)
    install_mmengine_fixes()
    install_mmengine_fixes()  # idempotent
    assert FUNCTIONS.get(FSDP_WRAP_POLICY) is layer_wrap_policy
