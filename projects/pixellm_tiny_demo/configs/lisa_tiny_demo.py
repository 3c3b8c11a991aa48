# LISA at CPU size on the demo's generated MUSE-format data: the LISA classes (CLIP view for the
# LLM, SAM image encoder and mask decoder, one [SEG] token; configs/_base_/models/lisa_tiny.py)
# with the data, pipelines, schedule and gIoU/cIoU of configs/pixellm/pixellm_tiny_muse.py, so
# the two models are compared on one protocol. `data_root` is written by
# projects/pixellm_tiny_demo/tools/generate_demo_data.py --out data/muse_demo.
#
# Unlike LISA-7B, where CLIP, SAM's image encoder and the LLM come pre-trained and stay frozen
# (LoRA on the LLM), every part here starts from random weights, so every part is trained whole:
# a random frozen SAM encoder would hand the mask decoder features that carry nothing about the
# shapes, a random frozen CLIP the LLM nothing to name, and a random frozen projector would
# scramble what CLIP gives. Only SAM's prompt encoder stays frozen (LISA's), as it only supplies
# the "no mask" embedding and the positional encoding.
from mmengine.config import read_base

with read_base():
    from ....configs.pixellm.pixellm_tiny_muse import *  # noqa: F401,F403
    from ....configs._base_.models.lisa_tiny import *  # noqa: F401,F403

model.update(  # noqa: F405
    vision_encoder=dict(model['vision_encoder'], frozen=False),  # noqa: F405
    mask_encoder=dict(model['mask_encoder'], frozen=False),  # noqa: F405
    llm=dict(model['llm'], freeze=False, lora=None),  # noqa: F405
    train_projector=True)

# The pipelines of pixellm_tiny_muse.py, resizing to the mask encoder's side.
for _pipeline in (train_pipeline, test_pipeline):  # noqa: F405
    for _step in _pipeline:
        if _step['type'] == 'ResizeLongestSide':
            _step['size'] = image_size  # noqa: F405
train_dataloader['dataset']['pipeline'] = train_pipeline  # noqa: F405
test_dataloader['dataset']['pipeline'] = test_pipeline  # noqa: F405
del _pipeline, _step
