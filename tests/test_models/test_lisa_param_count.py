"""LISA-7B's components built on the meta device have the official architecture's parameter count.

The expected numbers are computed here from the official module shapes (LLaMA-7B with 32000 + 3
rows, CLIP ViT-L/14 at 224, the ``mm_projector`` Linear, SAM ViT-H's image encoder, SAM's prompt
encoder and mask decoder as ``build_sam_vit_h`` builds them, ``text_hidden_fcs``), not from the
toolbox's modules.
"""
import torch
from lisa_fixtures import CLIP_VIT_L14, LLAMA_7B, SAM_VIT_H, lisa_components

from pixellm.models.meta_build import count_parameters


def linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def llama(vocab, h, inter, layers):
    per_layer = 4 * linear(h, h, False) + 3 * linear(h, inter, False) + 2 * h
    return 2 * vocab * h + layers * per_layer + h


def clip_vit_l14(grid, d=1024, layers=24):
    embeddings = d + 3 * 14 * 14 * d + (grid * grid + 1) * d  # class, patch conv, positions
    layer = 4 * linear(d, d) + linear(d, 4 * d) + linear(4 * d, d) + 4 * d
    return embeddings + 2 * d + layers * layer + 2 * d  # pre and post layer norms


def sam_image_encoder(d=1280, layers=32, heads=16, global_layers=4, window=14, grid=64, out=256):
    head = d // heads
    embeddings = linear(3 * 16 * 16, d) + grid * grid * d
    block = 2 * 2 * d + linear(d, 3 * d) + linear(d, d) + linear(d, 4 * d) + linear(4 * d, d)
    rel_pos = (global_layers * 2 * (2 * grid - 1) * head
               + (layers - global_layers) * 2 * (2 * window - 1) * head)
    neck = d * out + 2 * out + out * out * 9 + 2 * out
    return embeddings + layers * block + rel_pos + neck


def sam_prompt_encoder(c=256, mask_in=16):
    fourier = 2 * (c // 2)  # a buffer in segment_anything, a parameter in transformers
    points = 4 * c + c  # point_embeddings, not_a_point_embed
    q = mask_in // 4
    mask = (q * 4 + q) + 2 * q + (mask_in * q * 4 + mask_in) + 2 * mask_in + linear(mask_in, c)
    return fourier, points + mask + c  # + no_mask_embed


def sam_mask_decoder(c=256, mlp=2048, depth=2, tokens=4, iou_hidden=256):
    def attention(inner):
        return 3 * linear(c, inner) + linear(inner, c)

    block = (attention(c) + attention(c // 2) + attention(c // 2)
             + linear(c, mlp) + linear(mlp, c) + 4 * 2 * c)
    transformer = depth * block + attention(c // 2) + 2 * c
    upscaling = (c * (c // 4) * 4 + c // 4) + 2 * (c // 4) + ((c // 4) * (c // 8) * 4 + c // 8)
    hyper = linear(c, c) + linear(c, c) + linear(c, c // 8)
    iou_head = linear(c, iou_hidden) + linear(iou_hidden, iou_hidden) + linear(iou_hidden, tokens)
    total = transformer + c + tokens * c + upscaling + tokens * hyper + iou_head
    return total, (tokens - 1) * hyper + iou_head  # and what no loss reaches


def test_lisa_7b_components_have_the_official_parameter_count():
    with torch.device('meta'):
        model = lisa_components(LLAMA_7B, CLIP_VIT_L14, SAM_VIT_H)
    h = 4096
    parts = dict(
        llm=llama(32000 + 3, h, 11008, 32),
        vision_encoder=clip_vit_l14(224 // 14),
        projector=linear(1024, h),
        mask_encoder=sam_image_encoder(),
    )
    fourier, prompt = sam_prompt_encoder()
    decoder, unreached = sam_mask_decoder()
    text_fcs = linear(h, h) + linear(h, 256)
    parts['pixel_decoder'] = text_fcs + fourier + prompt + decoder
    for name, expected in parts.items():
        assert count_parameters(getattr(model, name))[0] == expected, name
    total, trainable = count_parameters(model)
    assert total == sum(parts.values())
    # The well-known sizes: LLaMA-7B 6.74B, CLIP ViT-L/14 0.30B, SAM ViT-H's encoder 0.64B.
    assert round(parts['llm'] / 1e9, 2) == 6.74
    assert round(parts['vision_encoder'] / 1e6) == 303
    assert round(parts['mask_encoder'] / 1e6) == 637
    assert round((prompt + decoder) / 1e6, 2) == 4.06
    # Trainable as the components come: text_hidden_fcs and the mask decoder less the heads no
    # loss reaches (the prompt encoder, SAM's image encoder and CLIP frozen, as in LISA); the
    # added token rows (the base tables train only with the LLM's train_token_tables, which
    # LISA's train_ds.py does); the projector, which LISA freezes (train_ds.py) and the model
    # that assembles these components must freeze too.
    assert trainable == text_fcs + decoder - unreached + 2 * 3 * h + parts['projector']
