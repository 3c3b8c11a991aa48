"""LISA on PixelLM's flow: trainable set, one mask per [SEG], the two image views, metrics."""
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, make_batch, make_sample
from test_pixellm import _script_generation

from pixellm.registry import MODELS
from pixellm.text import codebook_token_strings

LISA_TINY = osp.join(REPO, 'configs', '_base_', 'models', 'lisa_tiny.py')


def lisa_cfg(**overrides):
    from pixellm.utils.config import load_config
    cfg = load_config(LISA_TINY, import_plugins=False).model.to_dict()
    cfg.update(overrides)
    return cfg


def build_lisa(seed=0, **overrides):
    torch.manual_seed(seed)
    return MODELS.build(lisa_cfg(**overrides))


def test_a_single_token_codebook_may_be_named_without_an_index():
    assert codebook_token_strings(1, 1, '[SEG]') == ['[SEG]']
    assert codebook_token_strings(1, 2) == ['[SEG0]', '[SEG1]']
    with pytest.raises(ValueError, match="exactly one '{}'"):
        codebook_token_strings(1, 2, '[SEG]')


def test_derived_shapes_come_from_the_mask_encoder():
    model = build_lisa()
    assert model.codebook.tokens == ['[SEG]']
    assert model.data_preprocessor.size == model.mask_encoder.image_size == 128
    # SAM's statistics, not CLIP's.
    assert torch.allclose(model.data_preprocessor.mean.flatten(),
                          torch.tensor([0.485, 0.456, 0.406]))
    dec = model.pixel_decoder
    assert (dec.feat_channels, dec.grid_size, dec.input_size) == (64, 8, 128)
    assert model.mask_projector is None
    assert model.llm_image_grid == model.vision_encoder.grid_size == 4
    with pytest.raises(ValueError, match='mask_encoder'):
        build_lisa(mask_encoder=None)


def test_loss_grads_reach_exactly_the_trainable_parts():
    model = build_lisa()
    model.train()
    losses = model(**make_batch(model, targets=(2, 0, 1)), mode='loss')
    assert set(losses) == {'loss_ce', 'loss_mask_bce', 'loss_mask_dice'}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    # Non-zero, except LoRA's A matrices (B starts at zero).
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if p.grad is not None and 'lora_A' not in n)
    # LISA's train_ds.py: LoRA, the added token rows, text_hidden_fcs and the mask decoder.
    for name in trainable:
        assert (name.startswith(('llm.new_embed', 'llm.new_head', 'pixel_decoder.text_hidden_fcs',
                                 'pixel_decoder.mask_decoder.')) or 'lora_' in name), name
    for part in ('lora_', 'llm.new_embed', 'text_hidden_fcs', 'mask_decoder.transformer'):
        assert any(part in n for n in trainable), part
    for frozen in (model.vision_encoder, model.mask_encoder, model.projector,
                   model.pixel_decoder.prompt_encoder):
        assert not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize('num_targets', [0, 1, 3])
def test_predict_gives_one_mask_per_generated_seg(num_targets):
    model = build_lisa().eval()
    text = 'They are ' + ' and '.join(['[SEG]'] * num_targets) + '.'
    _script_generation(model, model.tokenizer(text, add_special_tokens=False).input_ids)
    image, sample = make_sample(model, 1, hw=(96, 128), ori=(37, 49))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    out = model(**data, mode='predict')[0]
    assert out.pred_instances.masks.shape == (num_targets, 37, 49)
    assert out.pred_text.count('[SEG]') == num_targets


def test_the_decoder_reads_the_mask_encoder_and_the_llm_the_clip_view():
    model = build_lisa().eval()
    data = make_batch(model, targets=(2, 1))
    images = data['inputs']
    seen = {}
    decoder_forward = model.pixel_decoder.forward

    def capture(states, feats):
        seen['feats'] = feats
        return decoder_forward(states, feats)

    model.pixel_decoder.forward = capture
    llm_forward = model.llm.forward

    def capture_llm(emb, **kwargs):
        seen.setdefault('emb', emb)
        return llm_forward(emb, **kwargs)

    model.llm.forward = capture_llm
    with torch.no_grad():
        model(**data, mode='tensor')
        # By hand: SAM's ViT and neck on the padded, SAM-normalised input.
        sam = model.mask_encoder.image_encoder
        x = sam.patch_embed(images) + sam.pos_embed
        for layer in sam.layers:
            x = layer(x)
            x = x[0] if isinstance(x, tuple) else x
        expected = sam.neck(x).flatten(2).transpose(1, 2)
        # The LLM's image tokens: CLIP on the centre-cropped view, layer -2, Linear projector.
        views = model.llm_view_images(images, [s.img_shape for s in data['data_samples']])
        clip = model.vision_encoder(views, [(56, 56)] * 2)[0]
        tokens = model.projector(clip)
    assert len(seen['feats']) == 1
    assert torch.allclose(seen['feats'][0], expected, atol=1e-5)
    ids = data['data_samples'][0].input_ids
    p = int((ids < 0).nonzero()[0])
    assert torch.allclose(seen['emb'][0, p:p + 16], tokens[0], atol=1e-5)


def test_the_llm_view_is_clip_image_processor_s_centre_crop():
    from transformers import CLIPImageProcessor
    model = build_lisa().eval()
    # A smooth landscape image whose left and right thirds the centre crop drops.
    h, w = 60, 120
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing='ij')
    img = torch.stack([xx, yy, 1 - xx * yy]) * 200 + 20
    img[:, :, :w // 3] = 255
    img = img.round().to(torch.uint8)
    _, sample = make_sample(model, 1, hw=(h, w), ori=(h, w))
    # The pipeline's resize: longest side to the mask-encoder size.
    big = F.interpolate(img[None].float(), (64, 128), mode='bilinear', antialias=True,
                        align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    data = model.data_preprocessor(dict(inputs=[big], data_samples=[sample]), False)
    ours = model.llm_view_images(data['inputs'], [data['data_samples'][0].img_shape])[0]
    processor = CLIPImageProcessor(size={'shortest_edge': 56}, crop_size={'height': 56,
                                                                          'width': 56})
    ref = processor(images=img.permute(1, 2, 0).numpy(), return_tensors='pt')['pixel_values'][0]
    # Equal up to resampling (ours resamples the resized image in float; CLIP the original
    # with PIL, rounded to 8 bits); the dropped white strip would show as an error of ~1.
    assert ours.shape == ref.shape == (3, 56, 56)
    assert (ours - ref).abs().mean() < 0.05
    # llm_view='pad' squeezes the whole padded square into the view instead: far from it.
    model.llm_view = 'pad'
    padded = model.llm_view_images(data['inputs'], [data['data_samples'][0].img_shape])[0]
    assert padded.shape == (3, 56, 56) and (padded - ref).abs().mean() > 0.2


def test_metrics_score_the_predictions_unchanged():
    from pixellm.evaluation import ReasonSegMetric
    model = build_lisa().eval()
    _script_generation(model, model.tokenizer('It is [SEG].', add_special_tokens=False).input_ids)
    image, sample = make_sample(model, 1, hw=(96, 128), ori=(24, 32))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    out = model(**data, mode='predict')
    metric = ReasonSegMetric()
    metric.process({}, [o.to_dict() for o in out])
    result = metric.compute_metrics(metric.results)
    pred = out[0].pred_instances.masks[0]
    gt = out[0].gt_instances.masks[0]
    iou = (pred & gt).sum() / (pred | gt).sum().clamp(min=1)
    assert 0 < float(iou) < 1
    assert result['gIoU'] == pytest.approx(float(iou), abs=1e-6)
