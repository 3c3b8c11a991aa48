# Ablation: 3 codebook token(s) per scale.
from mmengine.config import read_base

with read_base():
    from ...pixellm_tiny_demo.configs.pixellm_tiny_demo import *  # noqa: F401,F403

codebook = dict(type='SegCodebook', num_scales=2, tokens_per_scale=3)
# Lazy configs copy imported dicts, so the codebook is replaced where the model and the two
# pipelines hold it.
model.update(codebook=codebook)  # noqa: F405
for loader in (train_dataloader, test_dataloader):  # noqa: F405
    for step in loader['dataset']['pipeline']:
        if 'codebook' in step:
            step['codebook'] = codebook
