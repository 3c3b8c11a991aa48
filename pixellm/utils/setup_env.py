"""Register every pixellm component and make ``pixellm`` the default registry scope."""
import datetime
import importlib
import importlib.util
import warnings
from typing import List

from mmengine import DefaultScope

SCOPE = 'pixellm'
# Packages whose import registers components; visualization is optional (may not exist yet).
REQUIRED_PACKAGES = ('pixellm.text', 'pixellm.models', 'pixellm.datasets', 'pixellm.evaluation',
                     'pixellm.engine')
OPTIONAL_PACKAGES = ('pixellm.visualization', )


def register_all_modules(init_default_scope: bool = True) -> List[str]:
    """Import the pixellm packages that register components, and set the default scope.

    Args:
        init_default_scope (bool): Make ``pixellm`` the current ``DefaultScope`` so that
            ``type='X'`` resolves in pixellm's registries first. Defaults to True.

    Returns:
        list[str]: The packages imported.
    """
    imported = []
    for name in REQUIRED_PACKAGES:
        importlib.import_module(name)
        imported.append(name)
    for name in OPTIONAL_PACKAGES:
        # find_spec only says whether it exists; an existing package that fails must fail loudly.
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
            imported.append(name)
    if init_default_scope:
        current = DefaultScope.get_current_instance()
        if current is None or not DefaultScope.check_instance_created(SCOPE):
            DefaultScope.get_instance(SCOPE, scope_name=SCOPE)
        elif current.scope_name != SCOPE:
            warnings.warn(f'The current default scope "{current.scope_name}" is not "{SCOPE}"; '
                          f'register_all_modules switches it to "{SCOPE}".')
            # Instance names must be unique; a timestamp makes a fresh one.
            stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')
            DefaultScope.get_instance(f'{SCOPE}-{stamp}', scope_name=SCOPE)
    return imported
