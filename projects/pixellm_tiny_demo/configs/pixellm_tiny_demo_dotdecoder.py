# The demo with a third-party pixel decoder from plugins/ (repository root), reached only through
# custom_imports.
from mmengine.config import read_base

with read_base():
    from .pixellm_tiny_demo import *  # noqa: F401,F403

custom_imports = dict(
    imports=['projects.pixellm_tiny_demo.pixellm_tiny_demo', 'plugins.dot_product_decoder'],
    allow_failed_imports=False)
# Assigned, not merged: the demo decoder's options (depth, state_norm, ...) do not apply.
model['pixel_decoder'] = dict(type='DotProductPixelDecoder', embed_dim=64)  # noqa: F405
