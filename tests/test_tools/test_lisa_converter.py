"""tools/model_converters/lisa_hf_to_pixellm.py: a released-LISA folder becomes a checkpoint that
loads strictly into the config's LISA, every official tensor where LISA keeps it."""
import os.path as osp
import sys

import torch
from conftest import REPO, load_tool

from pixellm.engine import load_checkpoint_safely
from pixellm.registry import MODELS
from pixellm.utils.config import load_config

sys.path.insert(0, osp.join(REPO, 'tests', 'test_models'))
from lisa_fixtures import ADDED, lisa_shapes, random_state  # noqa: E402

LISA_TINY = osp.join(REPO, 'configs', '_base_', 'models', 'lisa_tiny.py')
# SAM's ViT MLP is 4x its width; the tiny config's is 2x, so the fixture shapes ask for 4x.
OPTIONS = ['model.mask_encoder.vision_config.mlp_dim=256']
TINY_SAM = dict(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3), window_size=4,
                image_size=128, patch_size=16, out_chans=64, mlp_dim=128, iou_hidden=64)


def test_a_released_folder_converts_and_loads_strictly(tmp_path):
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel
    cfg = load_config(LISA_TINY, cfg_options={'model.mask_encoder.vision_config.mlp_dim': 256})
    clip_cfg = cfg.model.vision_encoder.vision_config
    shapes = lisa_shapes(1024 + ADDED, 128, 256, 2, TINY_SAM, clip_hidden=64, out_dim=64,
                         head_dim=32)
    official = random_state(shapes, seed=3)
    src, clip_dir = tmp_path / 'LISA-tiny', tmp_path / 'clip'
    src.mkdir()
    save_file({k: v.contiguous() for k, v in official.items()}, str(src / 'model.safetensors'))
    torch.manual_seed(1)
    CLIPVisionModel(CLIPVisionConfig(**clip_cfg)).save_pretrained(str(clip_dir))
    dst = str(tmp_path / 'lisa_tiny.pth')
    tool = load_tool('model_converters/lisa_hf_to_pixellm')
    tool.main([str(src / 'model.safetensors'), dst, '--config', LISA_TINY, '--clip',
               str(clip_dir), '--cfg-options', *OPTIONS])
    ckpt = load_checkpoint_safely(dst)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    sd = model.state_dict()
    assert torch.equal(sd['pixel_decoder.text_hidden_fcs.2.weight'],
                       official['model.text_hidden_fcs.0.2.weight'])
    assert torch.equal(sd['projector.layers.0.weight'], official['model.mm_projector.weight'])
    assert torch.equal(sd['mask_encoder.image_encoder.neck.conv2.weight'],
                       official['model.visual_model.image_encoder.neck.2.weight'])
    assert torch.equal(model.llm.new_embed.data, official['model.embed_tokens.weight'][1024:])
    # CLIP comes from --clip (the released folders have none).
    clip = CLIPVisionModel.from_pretrained(str(clip_dir)).state_dict()

    def fc1(state):
        return next(v for k, v in state.items() if k.endswith('layers.1.mlp.fc1.weight'))

    assert torch.equal(fc1(model.vision_encoder.state_dict()), fc1(clip))
    assert set(ckpt['meta']['filled']) and all('lora_' in k for k in ckpt['meta']['filled'])
