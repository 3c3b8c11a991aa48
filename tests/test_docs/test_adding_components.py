"""docs/adding_components.md, run: the page's marked code blocks are saved as the files their
first line names, each section's config is loaded the way the tools load it (``custom_imports``
from the config's folder) and its component is checked: the encoder and the LLM train in the
tiny PixelLM (a gradient on every trainable weight), the dataset decodes the polygons it was
given."""
import json
import os
import os.path as osp
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import REPO, build_tiny, make_batch

GUIDE = osp.join(REPO, 'docs', 'adding_components.md')
# The packages the guide's blocks define; imported from a test folder and forgotten afterwards.
PLUGIN_PACKAGES = ('my_encoders', 'my_llms', 'my_datasets')


def guide_blocks(name):
    """The ```python blocks of the guide marked ``<!-- test: name -->``, in page order."""
    with open(GUIDE, encoding='utf-8') as f:
        text = f.read()
    pattern = r'<!-- test: ' + re.escape(name) + r' -->\s*```python\n(.*?)```'
    blocks = re.findall(pattern, text, flags=re.S)
    assert blocks, f'{GUIDE} has no block marked <!-- test: {name} -->'
    return blocks


def save_blocks(name, root):
    """Save each block of section ``name`` under ``root`` as the file its first line names.

    Returns:
        str: The config among them (the one file that is not a package's ``__init__.py``).
    """
    configs = []
    for block in guide_blocks(name):
        first = block.splitlines()[0]
        match = re.fullmatch(r'# (\S+\.py)', first)
        assert match, f'a guide block must start with "# <file>.py", got {first!r}'
        path = osp.join(str(root), match.group(1))
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as f:
            f.write(block)
        if osp.basename(path) != '__init__.py':
            configs.append(path)
    assert len(configs) == 1, f'section {name!r} should have one config block, got {configs}'
    return configs[0]


@pytest.fixture
def plugin_scope():
    """Undo what importing a guide plugin does: its registry entries, the LLM table entry, the
    imported modules and the ``sys.path`` entries ``load_config`` adds."""
    from pixellm.models.llms import causal_lm
    from pixellm.registry import DATASETS, MODELS
    architectures = causal_lm.registered_llm_architectures()
    path = list(sys.path)

    def forget_plugins():
        for module in [m for m in sys.modules if m.split('.')[0] in PLUGIN_PACKAGES]:
            del sys.modules[module]

    forget_plugins()
    yield
    # Only the plugins' own classes: pixellm modules first imported during the test keep theirs.
    for registry in (MODELS, DATASETS):
        for name, obj in list(registry.module_dict.items()):
            if getattr(obj, '__module__', '').split('.')[0] in PLUGIN_PACKAGES:
                registry.module_dict.pop(name)
    causal_lm._ARCHITECTURES.clear()
    causal_lm._ARCHITECTURES.update(architectures)
    forget_plugins()
    sys.path[:] = path


def load_guide_config(name, tmp_path):
    from pixellm.utils import load_config
    return load_config(save_blocks(name, tmp_path))


def loss_and_backward(model, data):
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    model.zero_grad()
    total.backward()
    return losses


def trainable_without_gradient(module, zero_ok=()):
    """Names of trainable parameters with no gradient, or a zero one (unless in ``zero_ok``)."""
    bad = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.grad is None or not torch.isfinite(param.grad).all():
            bad.append(name)
        elif not any(key in name for key in zero_ok) and not param.grad.abs().sum() > 0:
            bad.append(name)
    return bad


# ------------------------------------------------------------------ encoder
def test_the_guide_encoder_trains_inside_pixellm(tmp_path, plugin_scope):
    from pixellm.registry import MODELS
    cfg = load_guide_config('encoder', tmp_path)
    assert cfg.model.vision_encoder.type == 'TinyViTEncoder'
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    enc = model.vision_encoder
    assert type(enc).__name__ == 'TinyViTEncoder'
    # What the section says PixelLM derives from the encoder.
    assert model.data_preprocessor.size == enc.image_size == 112
    assert model.projector.in_channels == model.mask_projector.in_channels == enc.embed_dim
    assert model.codebook.num_scales == model.pixel_decoder.num_scales == enc.num_scales == 2
    assert model.pixel_decoder.grid_size == enc.grid_size == 8

    model.train()
    loss_and_backward(model, make_batch(model))
    params = list(enc.parameters())
    assert params and all(p.requires_grad for p in params), 'frozen=False trains every weight'
    assert trainable_without_gradient(enc) == []


def test_the_guide_encoder_ignores_what_the_padding_holds(tmp_path, plugin_scope):
    from pixellm.registry import MODELS
    load_guide_config('encoder', tmp_path)
    torch.manual_seed(0)
    enc = MODELS.build(dict(type='TinyViTEncoder', frozen=False)).eval()
    valid_hw = [(50, 70), (112, 20)]
    keep = enc.valid_patches(valid_hw, torch.device('cpu'))
    assert keep.shape == (2, 8, 8)
    assert keep[0, :4, :5].all() and keep[0].sum() == 4 * 5  # ceil(50/14) x ceil(70/14)
    assert keep[1, :, :2].all() and keep[1].sum() == 8 * 2
    images = torch.randn(2, 3, 112, 112)
    changed = images.clone()
    for b in range(2):
        for r in range(8):
            for c in range(8):
                if not keep[b, r, c]:
                    changed[b, :, 14 * r:14 * (r + 1), 14 * c:14 * (c + 1)] = 5.0
    with torch.no_grad():
        same = enc(images, valid_hw)
        other = enc(changed, valid_hw)
        unmasked = enc(changed)
    mask = keep.flatten(1)
    assert len(same) == enc.num_scales
    for a, b, c in zip(same, other, unmasked):
        assert a.shape == (2, 64, 64)
        torch.testing.assert_close(a[mask], b[mask])
        assert not torch.allclose(a[mask], c[mask])  # without valid_hw the padding is seen


def test_the_guide_timm_config_trains_an_eva02_tower_inside_pixellm(tmp_path):
    from pixellm.registry import MODELS
    cfg = load_guide_config('timm', tmp_path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    enc = model.vision_encoder
    assert type(enc).__name__ == 'TimmVisionEncoder'
    assert type(enc.vision_model).__name__ == 'Eva'
    assert (enc.image_size, enc.grid_size, enc.embed_dim, enc.num_scales) == (112, 8, 64, 2)
    # select_layers (-2, -4) of 4 blocks: blocks 1-3 run, the 4th was removed.
    assert len(enc.vision_model.blocks) == 3
    model.train()
    loss_and_backward(model, make_batch(model))
    params = list(enc.parameters())
    assert params and all(p.requires_grad for p in params), 'frozen=False trains every weight'
    assert trainable_without_gradient(enc) == []


# ------------------------------------------------------------------ LLM
LORA = dict(r=4, alpha=8, dropout=0.0, target_modules=['q_proj', 'v_proj'])


def test_the_guide_llm_trains_inside_pixellm(tmp_path, plugin_scope):
    from pixellm.registry import MODELS
    cfg = load_guide_config('llm', tmp_path)
    assert cfg.model.llm.type == 'Qwen3CausalLM'
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    llm = model.llm
    assert type(llm).__name__ == 'Qwen3CausalLM'
    assert type(llm.hf_model).__name__ == 'Qwen3ForCausalLM'
    assert model.projector.out_channels == model.pixel_decoder.in_channels == llm.hidden_size
    assert llm.base_vocab_size == 1024 and llm.vocab_size == len(model.tokenizer)
    model.train()
    loss_and_backward(model, make_batch(model))
    trained = [n for n, p in llm.named_parameters() if p.requires_grad]
    assert any('self_attn.q_proj' in n for n in trained), 'freeze=False trains the whole LLM'
    assert trainable_without_gradient(llm) == []


def test_the_guide_llm_takes_lora_and_the_table_entry_serves_hfcausallm(tmp_path, plugin_scope):
    cfg = load_guide_config('llm', tmp_path)
    # The tiny base model (CLIP, LoRA on the LLM) with the guide's LLM in LoRA mode.
    model = build_tiny(llm=dict(cfg.model.llm.to_dict(), freeze=True, lora=LORA))
    model.train()
    loss_and_backward(model, make_batch(model))
    trained = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert {'new_embed', 'new_head'} <= set(trained)
    assert len([n for n in trained if 'lora_' in n]) == 2 * 2 * 2  # layers x (q, v) x (A, B)
    # LoRA's B starts at zero, so A's first gradient is zero: it must exist all the same.
    assert trainable_without_gradient(model.llm, zero_ok=('lora_A', )) == []

    from pixellm.models.llms import HFCausalLM
    plain = HFCausalLM(llm_config=dict(cfg.qwen3_tiny.to_dict(), model_type='qwen3'))
    assert type(plain.hf_model).__name__ == 'Qwen3ForCausalLM'


# ------------------------------------------------------------------ dataset
# Two images; each line is one question with its targets' polygons (answer order).
IMAGES = {'0001.png': (90, 120), '0002.png': (70, 50)}  # name: (height, width)
LINES = [
    dict(image='0001.png', question='Which shapes are pointed?',
         answer='The triangle is {seg} and the star is {seg}.',
         polygons=[[10.5, 12.0, 60.0, 20.5, 30.2, 70.8],
                   [80.0, 10.0, 115.0, 25.0, 108.0, 60.0, 90.5, 82.0, 70.0, 45.0]]),
    dict(image='0002.png', question='Where is the box?', answer='It is {seg}.',
         polygons=[[5.0, 8.0, 40.0, 8.0, 40.0, 50.0, 5.0, 50.0]]),
]


def write_dataset(root, lines=LINES, name='val.jsonl'):
    rng = np.random.default_rng(0)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    for image, (h, w) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / 'images' / image)
    (root / name).write_text(''.join(json.dumps(line) + '\n' for line in lines))


def drawn(polygon, height, width):
    """The polygon filled by PIL, outline included, as an (H, W) bool array."""
    canvas = Image.new('1', (width, height))
    points = list(zip(polygon[0::2], polygon[1::2]))
    ImageDraw.Draw(canvas).polygon(points, fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def grow(mask):
    """``mask`` dilated by one pixel (8-neighbourhood)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    return np.any([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)


def test_the_guide_dataset_gives_the_polygons_as_target_masks(tmp_path, plugin_scope,
                                                              monkeypatch):
    from pixellm.registry import DATASETS
    cfg = load_guide_config('dataset', tmp_path)
    study = osp.dirname(cfg.filename)
    data = tmp_path / 'my_study' / 'data' / 'my_seg'
    write_dataset(data, name='val.jsonl')
    monkeypatch.chdir(study)  # the config's data_root is relative, as run from my_study/
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    assert type(dataset).__name__ == 'JsonlSegDataset' and len(dataset) == len(LINES)
    for index, line in enumerate(LINES):
        out = dataset[index]
        sample = out['data_samples']
        h, w = IMAGES[line['image']]
        assert sample.metainfo['ori_shape'] == (h, w)
        assert sample.metainfo['question'] == line['question']
        assert max(out['inputs'].shape[-2:]) == 112  # ResizeLongestSide of the tiny pipeline
        masks = sample.gt_instances.masks.numpy()
        assert masks.shape == (len(line['polygons']), h, w)
        for mask, polygon in zip(masks, line['polygons']):
            ref = drawn(polygon, h, w)
            iou = (mask & ref).sum() / (mask | ref).sum()
            assert iou > 0.85, iou
            # Rasterisers differ only on the outline: within one pixel of PIL's drawing.
            assert not (mask & ~grow(ref)).any()
            assert not (~mask & ~grow(~ref)).any()
        # Each {seg} became the codebook tokens of one target.
        answer = sample.metainfo['answer']
        assert '{seg}' not in answer
        assert sample.metainfo['num_targets'] == len(line['polygons'])


def test_the_guide_dataset_trains_and_names_bad_lines(tmp_path, plugin_scope, monkeypatch):
    from mmengine.dataset import pseudo_collate

    from pixellm.datasets import DatasetFormatError
    from pixellm.registry import DATASETS, MODELS
    cfg = load_guide_config('dataset', tmp_path)
    data = tmp_path / 'my_study' / 'data' / 'my_seg'
    write_dataset(data, name='train.jsonl')
    monkeypatch.chdir(osp.dirname(cfg.filename))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    batch = model.data_preprocessor(pseudo_collate([dataset[0], dataset[1]]), True)
    losses = loss_and_backward(model, batch)
    # The pixel losses see the dataset's targets: one mask per polygon.
    assert losses[model.loss_mask.loss_name] > 0 and losses[model.loss_dice.loss_name] > 0
    assert [len(s.gt_instances.masks) for s in batch['data_samples']] == [2, 1]

    bad = [dict(LINES[1], answer='It is {seg} and {seg}.'),
           dict(LINES[1], polygons=[[5.0, 8.0, 40.0, 8.0, 60.0, 8.0]])]
    for k, (line, field) in enumerate(zip(bad, ('answer', 'polygons[0]'))):
        write_dataset(data, lines=[LINES[0], line], name=f'bad{k}.jsonl')
        with pytest.raises(DatasetFormatError) as err:
            DATASETS.build(dict(cfg.train_dataloader.dataset.to_dict(), ann_file=f'bad{k}.jsonl'))
        assert err.value.record == 'line 2' and err.value.field == field
        assert err.value.file.endswith(f'bad{k}.jsonl')
