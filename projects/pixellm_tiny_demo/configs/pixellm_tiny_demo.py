# The offline demo's stage 2: PixelLM-tiny (configs/pixellm/pixellm_tiny_muse.py) trained on the
# generated MUSE-format dataset on a CPU, with the components below that an LLM trained from
# random weights needs. `projects/pixellm_tiny_demo/tools/run_demo.py` (`make demo`) generates the
# data, pre-trains the tiny CLIP tower (stage 1, pixellm_tiny_demo_encoder.py), trains this config
# from it (--cfg-options model.vision_encoder.pretrained=work_dirs/pixellm_tiny_demo_encoder/
# vision_encoder; without it the tower starts from random weights) and evaluates with
# tools/test.py.
from mmengine.config import read_base

with read_base():
    from ....configs.pixellm.pixellm_tiny_muse import *  # noqa: F401,F403

custom_imports = dict(imports=['projects.pixellm_tiny_demo.pixellm_tiny_demo'],
                      allow_failed_imports=False)
model.update(  # noqa: F405
    # A random-init LLM's codebook states share one dominant, target-independent part; the
    # decoder standardises them over the batch and scales the prompts (PromptNormPixelDecoder).
    pixel_decoder=dict(model['pixel_decoder'], type='PromptNormPixelDecoder',  # noqa: F405
                       state_norm='batch', prompt_scale=8.0),
    aux_heads=[
        # Each codebook state predicts the words written just before it ("the red circle"), from
        # the answer text alone, so the LLM carries the target into those states.
        dict(type='CodebookContextHead', window=4, loss_weight=1.0),
        # The states at the 4 positions before each target's codebook tokens score the image
        # tokens, and their softmax is pulled towards the target's share of each cell of the
        # 8x8 token grid, so the LLM looks up the object it names.
        dict(type='GroundingHead', window=4, loss_weight=1.0),
    ],
    # The text loss weighs 4 (official 1.0): the colour and shape words of an answer are a few
    # of its tokens, and naming the wrong object is where the tiny LLM fails.
    loss_lm=dict(type='LMCrossEntropyLoss', loss_weight=4.0),
    # The LLM sees all 8x8 patches of the tiny encoder rather than a pooled 4x4 grid.
    llm_image_grid=8)
