"""``load_config`` imports plugins of lazy and plain configs; mmengine 0.10.7 parsing facts."""
import os.path as osp
import sys
import textwrap
import uuid

import pytest
from mmengine import DefaultScope
from mmengine.config import Config
from mmengine.registry import HOOKS as MMENGINE_HOOKS

from pixellm.registry import MODELS
from pixellm.utils import ConfigLoadError, load_config, register_all_modules
from pixellm.utils.config import config_import_paths, find_project_root, pixellm_repo_root


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _plugin(directory, module, model_name):
    """A plugin module that registers ``model_name`` in pixellm's MODELS when imported."""
    return _write(directory / f'{module}.py', f'''
        from torch import nn
        from pixellm.registry import MODELS


        @MODELS.register_module()
        class {model_name}(nn.Module):
            pass
        ''')


def _unique(prefix):
    # Module and class names must differ per test: imports and registrations are process-wide.
    return f'{prefix}_{uuid.uuid4().hex[:8]}'


def _lazy_config(directory, plugin_module, body=''):
    _write(directory / '_base_' / 'schedule.py', '''
        max_iters = 100
        lr = 2e-4
        ''')
    head = textwrap.dedent(f'''
        from mmengine.config import read_base

        with read_base():
            from ._base_.schedule import *

        custom_imports = dict(imports=['{plugin_module}'], allow_failed_imports=False)
        warmup = max_iters // 10
        ''')
    return _write(directory / 'exp.py', head + textwrap.dedent(body))


def test_lazy_config_custom_imports_register_the_plugin(tmp_path):
    module, model = _unique('engine_test_plugin'), _unique('PluginModel')
    _plugin(tmp_path, module, model)
    path = _lazy_config(tmp_path, module, body='''
        model = dict(type='{model}', name=f'run-{{max_iters}}')
        model.update(lr=lr * 2)
        steps = [i * warmup for i in range(3)]
        '''.format(model=model))
    # mmengine alone treats the file as lazy and ignores custom_imports.
    assert Config._is_lazy_import(str(path))
    Config.fromfile(str(path))
    assert MODELS.get(model) is None and module not in sys.modules

    cfg = load_config(path, cfg_options={'max_iters': 7})
    assert MODELS.get(model).__name__ == model
    assert cfg.max_iters == 7 and cfg.warmup == 10
    assert cfg.model == dict(type=model, name='run-100', lr=4e-4)
    assert cfg.steps == [0, 10, 20]
    assert str(tmp_path) == sys.path[0]


def test_plugins_package_at_project_root_is_importable(tmp_path):
    project = tmp_path / 'my_project'
    _write(project / 'pyproject.toml', '[project]\nname = "my-project"\n')
    package = _unique('plugins_pkg')
    _write(project / package / '__init__.py', '')
    module, model = _unique('seg_head'), _unique('ProjectModel')
    _plugin(project / package, module, model)
    config = _lazy_config(project / 'configs' / 'pixellm', f'{package}.{module}')
    assert find_project_root(str(config)) == str(project)
    assert config_import_paths(str(config)) == [str(config.parent), str(project),
                                                pixellm_repo_root()]
    load_config(config)
    assert MODELS.get(model).__name__ == model


def test_plain_config_with_plugin_next_to_it(tmp_path):
    module, model = _unique('engine_plain_plugin'), _unique('PlainModel')
    _plugin(tmp_path / 'cfgs', module, model)
    _write(tmp_path / 'cfgs' / 'base.py', 'lr = 0.1\n')
    path = _write(tmp_path / 'cfgs' / 'plain.py', f'''
        _base_ = ['./base.py']
        custom_imports = dict(imports=['{module}'], allow_failed_imports=False)
        ''')
    assert not Config._is_lazy_import(str(path))
    # mmengine imports plugins of plain configs, but with the sys.path of the moment.
    with pytest.raises(ImportError, match='PYTHONPATH'):
        Config.fromfile(str(path))
    cfg = load_config(path)
    assert cfg.lr == 0.1 and MODELS.get(model).__name__ == model


def test_failed_plugin_import_is_named_or_allowed(tmp_path):
    missing = _unique('no_such_plugin')
    strict = _write(tmp_path / 'strict.py', f'''
        custom_imports = dict(imports=['{missing}'], allow_failed_imports=False)
        ''')
    with pytest.raises(ImportError) as info:
        load_config(strict)
    assert str(strict) in str(info.value) and missing in str(info.value)
    lenient = _write(tmp_path / 'lenient.py', f'''
        custom_imports = dict(imports=['{missing}'], allow_failed_imports=True)
        x = 1
        ''')
    with pytest.warns(UserWarning, match=missing):
        assert load_config(lenient).x == 1


@pytest.mark.parametrize('call', ['os.path.join("a", "b")', 'math.ceil(3.2)'])
def test_calling_an_import_in_a_lazy_config_names_the_line(tmp_path, call):
    module = call.split('.')[0]
    path = _write(tmp_path / 'calls.py', f'''
        from mmengine.config import read_base

        with read_base():
            from .base import *
        import {module}
        value = {call}
        ''')
    _write(tmp_path / 'base.py', 'x = 1\n')
    # What mmengine 0.10.7 raises: a RuntimeError without a message.
    with pytest.raises(RuntimeError) as raw:
        Config.fromfile(str(path))
    assert str(raw.value) == ''
    with pytest.raises(ConfigLoadError) as info:
        load_config(path)
    message = str(info.value)
    assert f'{path}, line 7: value = {call}' in message
    assert 'LazyObject' in message


@pytest.mark.skipif(sys.version_info < (3, 11), reason='os is frozen from Python 3.11 on')
def test_importing_os_makes_a_plain_config_lazy(tmp_path):
    path = _write(tmp_path / 'uses_os.py', '''
        import os
        work_dir = os.path.join('work_dirs', 'x')
        ''')
    assert Config._is_lazy_import(str(path))
    with pytest.raises(ConfigLoadError, match='line 3'):
        load_config(path)


def test_load_config_reports_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.py'):
        load_config(tmp_path / 'nope.py')


def test_register_all_modules_sets_scope_and_registers_engine():
    imported = register_all_modules(init_default_scope=True)
    assert {'pixellm.models', 'pixellm.datasets', 'pixellm.evaluation',
            'pixellm.engine'} <= set(imported)
    assert DefaultScope.get_current_instance().scope_name == 'pixellm'
    # From mmengine's root registry, the pixellm scope resolves pixellm's hooks.
    hook = MMENGINE_HOOKS.build(dict(type='AtomicCheckpointHook', interval=3))
    assert type(hook).__name__ == 'AtomicCheckpointHook' and hook.interval == 3


def test_register_all_modules_switches_from_another_scope():
    DefaultScope.get_instance(_unique('other'), scope_name='mmengine')
    assert DefaultScope.get_current_instance().scope_name == 'mmengine'
    with pytest.warns(UserWarning, match='not "pixellm"'):
        register_all_modules(init_default_scope=True)
    assert DefaultScope.get_current_instance().scope_name == 'pixellm'


def test_repo_configs_dir_resolves_to_repo_root():
    repo = pixellm_repo_root()
    assert osp.isdir(osp.join(repo, 'pixellm'))
    assert find_project_root(osp.join(repo, 'configs', 'x.py')) == repo
