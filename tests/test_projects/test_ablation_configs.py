"""Every ablation config builds, its one change reaches the model and the pipeline, and they agree."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.dataset import pseudo_collate

from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
from pixellm.models.losses import MaskBCELoss, TargetRefinementLoss
from pixellm.registry import DATASETS, MODELS
from pixellm.utils import load_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(glob.glob(osp.join(REPO, 'projects', 'pixellm_ablations', 'configs', '*.py')))
EXPECTED = {
    'tokens_per_scale_1': dict(tokens_per_scale=1, num_scales=2, loss=MaskBCELoss),
    'tokens_per_scale_2': dict(tokens_per_scale=2, num_scales=2, loss=MaskBCELoss),
    'tokens_per_scale_3': dict(tokens_per_scale=3, num_scales=2, loss=MaskBCELoss),
    'scales_1': dict(tokens_per_scale=3, num_scales=1, loss=MaskBCELoss),
    'scales_2': dict(tokens_per_scale=3, num_scales=2, loss=MaskBCELoss),
    'refinement_loss_on': dict(tokens_per_scale=3, num_scales=2, loss=TargetRefinementLoss),
    'refinement_loss_off': dict(tokens_per_scale=3, num_scales=2, loss=MaskBCELoss),
    'timm_siglip_encoder': dict(tokens_per_scale=3, num_scales=2, loss=MaskBCELoss,
                                encoder='TimmVisionEncoder'),
}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('muse_ablation')
    generate_muse_scenes(str(root), num_train=4, num_val=2, seed=5)
    return str(root)


def test_every_listed_ablation_has_a_config():
    assert sorted(osp.basename(c)[:-3] for c in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: osp.basename(c)[:-3])
def test_ablation_reaches_model_and_pipeline(config, data_root):
    expected = EXPECTED[osp.basename(config)[:-3]]
    cfg = load_config(config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    assert model.codebook.tokens_per_scale == expected['tokens_per_scale']
    assert model.pixel_decoder.tokens_per_scale == expected['tokens_per_scale']
    assert model.pixel_decoder.num_scales == expected['num_scales']
    assert len(model.vision_encoder.select_layers) == expected['num_scales']
    assert type(model.vision_encoder).__name__ == expected.get('encoder', 'CLIPVisionEncoder')
    assert type(model.loss_mask) is expected['loss']
    dataset_cfg = dict(cfg.train_dataloader.dataset, data_root=data_root)
    dataset = DATASETS.build(dataset_cfg)
    batch = pseudo_collate([dataset[0], dataset[1]])
    sample = batch['data_samples'][0]
    # The answer writes each target with exactly the model's codebook tokens ...
    n = sample.gt_instances.masks.shape[0]
    assert sample.metainfo['answer'].count(model.codebook.target_text) == n
    # ... with the model's ids, so a training step pairs every target with its mask.
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    assert model.loss_mask.loss_name in losses
    assert all(torch.isfinite(v) for v in losses.values())
