# LISA at CPU size on the demo's generated MUSE-format data, trained as the demo trains PixelLM-tiny
# so that the two families are compared like for like: the LISA classes (CLIP view for the LLM,
# SAM image encoder and mask decoder, one [SEG] token; configs/_base_/models/lisa_tiny.py) with the
# data, pipelines, schedule and gIoU/cIoU of configs/pixellm/pixellm_tiny_muse.py, the stage-1 CLIP
# tower as the LLM's vision encoder, and the demo's auxiliary heads. `make demo`
# (projects/pixellm_tiny_demo/tools/run_demo.py) trains it after PixelLM-tiny with
#   tools/train.py projects/pixellm_tiny_demo/configs/lisa_tiny_demo.py \
#       --cfg-options model.vision_encoder.pretrained=work_dirs/pixellm_tiny_demo_encoder/vision_encoder
# (without that option the tower starts from random weights).
#
# Unlike LISA-7B, where CLIP, SAM's image encoder and the LLM come pre-trained and stay frozen
# (LoRA on the LLM), the LLM and the SAM-layout encoder start here from random weights, so every
# part trains whole: a random frozen SAM encoder would hand the mask decoder features that carry
# nothing about the shapes, and a random frozen projector would scramble what CLIP gives. Only
# SAM's prompt encoder stays frozen (LISA's), as it only supplies the "no mask" embedding and the
# positional encoding.
from mmengine.config import read_base

with read_base():
    from ....configs.pixellm.pixellm_tiny_muse import *  # noqa: F401,F403
    from ....configs._base_.models.lisa_tiny import *  # noqa: F401,F403

custom_imports = dict(imports=['projects.pixellm_tiny_demo.pixellm_tiny_demo'],
                      allow_failed_imports=False)
clip_image_size = 112  # the stage-1 tower's input side: an 8x8 patch grid, as PixelLM-tiny's

model['vision_encoder']['vision_config']['image_size'] = clip_image_size  # noqa: F405
model.update(  # noqa: F405
    vision_encoder=dict(model['vision_encoder'], frozen=False),  # noqa: F405
    mask_encoder=dict(model['mask_encoder'], frozen=False),  # noqa: F405
    llm=dict(model['llm'], freeze=False, lora=None),  # noqa: F405
    train_projector=True,
    # The LLM sees the whole padded image, as the stage-1 tower was trained to see it and as the
    # grounding head's targets are laid out, with the padded patches hidden.
    llm_view='pad', mask_padded_image_tokens=True, llm_image_grid=8,
    # PixelLM-tiny's demo heads and text-loss weight (pixellm_tiny_demo.py says why).
    aux_heads=[dict(type='CodebookContextHead', window=4, loss_weight=1.0),
               dict(type='GroundingHead', window=4, loss_weight=1.0)],
    loss_lm=dict(type='LMCrossEntropyLoss', loss_weight=4.0))

# The pipelines of pixellm_tiny_muse.py, resizing to the mask encoder's side.
for _pipeline in (train_pipeline, test_pipeline):  # noqa: F405
    for _step in _pipeline:
        if _step['type'] == 'ResizeLongestSide':
            _step['size'] = image_size  # noqa: F405
train_dataloader['dataset']['pipeline'] = train_pipeline  # noqa: F405
test_dataloader['dataset']['pipeline'] = test_pipeline  # noqa: F405
del _pipeline, _step
