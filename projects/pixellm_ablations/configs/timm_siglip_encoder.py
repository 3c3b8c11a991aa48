# Ablation: the demo's tiny CLIP tower replaced by a timm SigLIP ViT of the same size
# (TimmVisionEncoder): 4 blocks 64 wide, 4 heads, MLP 128, 14-px patches on 112-px images (the
# 8x8 grid of the demo), layers -2 and -4, trained whole from random weights. SigLIP's tower
# differs from CLIP's by having no class token and no pre-norm. The demo's stage 1 hands a
# pre-trained CLIP tower to stage 2 through model.vision_encoder.pretrained; this tower always
# starts from random weights, so compare it with the demo config run without that override.
from mmengine.config import read_base

with read_base():
    from ...pixellm_tiny_demo.configs.pixellm_tiny_demo import *  # noqa: F401,F403

# Assigned, not updated: the CLIP keys (vision_config, pos_embed_layout...) must not stay.
model['vision_encoder'] = dict(  # noqa: F405
    type='TimmVisionEncoder',
    model_name='vit_base_patch16_siglip_224',
    pretrained=False,
    image_size=image_size,  # noqa: F405
    model_kwargs=dict(patch_size=14, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0),
    select_layers=(-2, -4),
    frozen=False)
