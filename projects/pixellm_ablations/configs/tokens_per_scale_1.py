# Ablation: 1 codebook token(s) per scale.
from mmengine.config import read_base

with read_base():
    from ...pixellm_tiny_demo.configs.pixellm_tiny_demo import *  # noqa: F401,F403

# The model and the pipelines share the text processor, so its codebook is the one place to change.
text_processor = dict(text_processor,  # noqa: F405
                      codebook=dict(type='SegCodebook', num_scales=2, tokens_per_scale=1))
