"""Stage 1 of the demo: semantic maps from MUSE records, the vision-tower pre-trainer, its export
to a Hugging Face folder and the load of that folder as PixelLM's tower."""
import copy
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from pycocotools import mask as mask_utils

from pixellm.datasets import DatasetFormatError, MUSEDataset
from pixellm.datasets.transforms import PackPixelLMInputs
from pixellm.models import CLIPVisionEncoder
from pixellm.structures import PixelLMDataSample
from projects.pixellm_tiny_demo.pixellm_tiny_demo import RenderSemanticMap, VisionEncoderPretrainer

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
TINY = osp.join(REPO, 'tests', 'data', 'muse_tiny')
ENCODER_CFG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo_encoder.py')
DEMO_CFG = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')
VCFG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            image_size=56, patch_size=14)


def tiny_records():
    with open(osp.join(TINY, 'muse_tiny.json')) as f:
        return json.load(f)


def rendered(records, tmp_path, index=0):
    ann = tmp_path / 'muse.json'
    ann.write_text(json.dumps(records))
    ds = MUSEDataset(ann_file=str(ann), data_root=TINY, data_prefix=dict(
        img_path='images', train2017_img_path='images'))
    return RenderSemanticMap()(ds.get_data_info(index))


def runs_to_mask(counts, height, width):
    """Column-major COCO run lengths, expanded by hand (background run first)."""
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for run in counts:
        flat[pos:pos + run] = value
        pos, value = pos + run, not value
    return flat.reshape(width, height).T


def test_semantic_map_paints_each_object_with_its_category(tmp_path):
    records = tiny_records()
    out = rendered(records, tmp_path)['gt_seg_map']
    rec = records[0]
    square, blob = rec['ann_list']
    expected = np.zeros((rec['height'], rec['width']), dtype=np.uint8)
    poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(
        square['segmentation'], rec['height'], rec['width']))).astype(bool)
    expected[poly] = square['category_id']
    rle = blob['segmentation']
    expected[runs_to_mask(rle['counts'], *rle['size'])] = blob['category_id']
    assert out.dtype == np.int32 and out.shape == (20, 24)
    np.testing.assert_array_equal(out, expected)
    assert set(np.unique(out)) == {0, 1, 2}


def test_a_later_object_covers_an_earlier_one(tmp_path):
    records = tiny_records()
    # A third object, category 3, over the whole square: the square's pixels become 3.
    records[0]['ann_list'].append(dict(id=73, category_id=3, segmentation=[
        [0.0, 0.0, 12.0, 0.0, 12.0, 10.0, 0.0, 10.0]]))
    out = rendered(records, tmp_path)['gt_seg_map']
    assert not (out == 1).any() and (out == 3).sum() > 0 and (out == 2).sum() == 54


def test_bad_objects_get_an_error_naming_file_record_and_field(tmp_path):
    records = tiny_records()
    no_category = copy.deepcopy(records)
    del no_category[0]['ann_list'][1]['category_id']
    with pytest.raises(DatasetFormatError) as err:
        rendered(no_category, tmp_path)
    text = str(err.value)
    assert 'muse.json' in text and 'id=7' in text and 'ann_list[1].category_id' in text

    no_ann_list = copy.deepcopy(records)
    del no_ann_list[0]['ann_list']
    with pytest.raises(DatasetFormatError, match="field 'ann_list': missing or not a list"):
        rendered(no_ann_list, tmp_path)

    no_segmentation = copy.deepcopy(records)
    del no_segmentation[0]['ann_list'][0]['segmentation']
    with pytest.raises(DatasetFormatError, match=r"field 'ann_list\[0\]': not an object with a "
                       'segmentation'):
        rendered(no_segmentation, tmp_path)

    wrong_size = copy.deepcopy(records)
    wrong_size[0]['ann_list'][1]['segmentation']['size'] = [10, 48]
    with pytest.raises(DatasetFormatError, match=r'ann_list\[1\]\.segmentation'):
        rendered(wrong_size, tmp_path)


def test_a_mask_unlike_the_image_and_a_foreign_data_info_are_refused(tmp_path):
    records = tiny_records()
    ann = tmp_path / 'muse.json'
    ann.write_text(json.dumps(records))
    info = MUSEDataset(ann_file=str(ann), data_root=TINY, data_prefix=dict(
        img_path='images', train2017_img_path='images')).get_data_info(0)
    # The image read from disk is 10x12, not the record's 20x24.
    with pytest.raises(DatasetFormatError, match=r"ann_list\[0\]\.segmentation': mask size "
                       r'20x24 differs from the image size 10x12'):
        RenderSemanticMap()(dict(info, ori_shape=(10, 12)))
    with pytest.raises(KeyError, match='reads the data infos of MUSEDataset'):
        RenderSemanticMap()(dict(img_path='x.png', height=4, width=4))


def test_pack_puts_the_map_in_gt_sem_seg(tmp_path):
    results = rendered(tiny_records(), tmp_path)
    results['img'] = np.zeros((20, 24, 3), dtype=np.uint8)
    results['img_shape'] = results['ori_shape'] = (20, 24)
    packed = PackPixelLMInputs(meta_keys=('img_path', 'ori_shape', 'img_shape'))(results)
    data = packed['data_samples'].gt_sem_seg.data
    assert data.shape == (1, 20, 24) and data.dtype == torch.long
    np.testing.assert_array_equal(data[0].numpy(), results['gt_seg_map'])


def pretrainer(**kwargs):
    torch.manual_seed(0)
    return VisionEncoderPretrainer(
        vision_encoder=dict(type='CLIPVisionEncoder', vision_config=VCFG, select_layers=(-2,),
                            frozen=False), num_classes=3, **kwargs)


def sample(label, img_shape, ori_shape=None):
    s = PixelLMDataSample(metainfo=dict(img_shape=img_shape,
                                        ori_shape=ori_shape or tuple(label.shape)))
    from mmengine.structures import PixelData
    s.gt_sem_seg = PixelData(data=torch.as_tensor(label)[None].long())
    return s


def test_patch_targets_are_the_class_fractions_of_each_patch():
    model = pretrainer()
    # A 28x28 image (2x2 patches of the 4x4 grid) at full resolution: left half class 1, the
    # bottom-right quarter class 2, the top-right quarter background; one 255 pixel is ignored.
    label = np.zeros((28, 28), dtype=np.int64)
    label[:, :10] = 1
    label[14:, 14:] = 2
    label[0, 0] = 255
    inputs = torch.zeros(1, 3, 56, 56)
    target = model.targets(inputs, [sample(label, (28, 28))])
    dist, has = model.patch_targets(target)
    # Patch (0, 0): 195 labelled pixels of which 139 are class 1 (rows 0-13, cols 0-9, minus
    # the ignored one) and 56 background.
    assert dist[0, :, 0, 0].tolist() == pytest.approx([56 / 195, 139 / 195, 0.0])
    assert dist[0, :, 0, 1].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert dist[0, :, 1, 0].tolist() == pytest.approx([56 / 196, 140 / 196, 0.0])
    assert dist[0, :, 1, 1].tolist() == pytest.approx([0.0, 0.0, 1.0])
    # Patches in the padding have no label and do not count.
    assert has[0].tolist() == [[True, True, False, False], [True, True, False, False],
                               [False] * 4, [False] * 4]


def test_majority_targets_prefer_an_object_covering_a_quarter_of_the_patch():
    model = pretrainer(target='majority')
    dist = torch.tensor([[0.70, 0.20, 0.10],    # objects 30% >= 25%: class 1
                         [0.80, 0.15, 0.05],    # objects 20%: background
                         [0.10, 0.30, 0.60]])   # class 2
    onehot = model.majority(dist.t().reshape(1, 3, 3, 1))
    assert onehot[0, :, :, 0].t().tolist() == [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="target must be 'fractions' or 'majority'"):
        pretrainer(target='hard')


def test_a_map_is_resized_to_the_resized_image_by_pixel_centres():
    model = pretrainer()
    label = np.random.default_rng(1).integers(0, 3, size=(56, 42))
    target = model.targets(torch.zeros(1, 3, 56, 56), [sample(label, (28, 21))])
    # Halving: output pixel i samples input pixel 2i + 1 (the centre of its 2x2 block).
    np.testing.assert_array_equal(target[0, :28, :21].numpy(), label[1::2, 1::2])
    assert (target[0, 28:] == 255).all() and (target[0, :, 21:] == 255).all()


def test_loss_is_the_soft_cross_entropy_of_labelled_patches():
    model = pretrainer()
    label = np.random.default_rng(0).integers(0, 3, size=(40, 30))
    inputs = torch.randn(1, 3, 56, 56)
    samples = [sample(label, (40, 30))]
    loss = model(inputs, samples, mode='loss')['loss_seg']
    logits = model._patch_logits(inputs, [(40, 30)])
    # By hand: class counts over each 14x14 patch of the unpadded 40x30 label map.
    total, n = 0.0, 0
    logp = torch.log_softmax(logits, 1)[0]
    for i in range(4):
        for j in range(4):
            block = label[i * 14:(i + 1) * 14, j * 14:(j + 1) * 14]
            if block.size == 0:
                continue
            frac = np.bincount(block.ravel(), minlength=3) / block.size
            total += -(torch.tensor(frac, dtype=torch.float32) * logp[:, i, j]).sum()
            n += 1
    assert n == 9
    assert loss.item() == pytest.approx((total / n).item(), rel=1e-5)


def test_a_label_beyond_num_classes_is_refused():
    model = pretrainer()
    with pytest.raises(ValueError, match='label value 7 is outside 0..2'):
        model(torch.zeros(1, 3, 56, 56), [sample(np.full((20, 20), 7), (20, 20))], mode='loss')


def test_pretrainer_learns_and_predicts_at_the_original_size():
    model = pretrainer()
    # Class 1 is the red half (left in images 0 and 2, right in 1 and 3), class 2 the other.
    label = np.zeros((56, 56), dtype=np.int64)
    label[:, :28], label[:, 28:] = 1, 2
    images = torch.zeros(4, 3, 56, 56)
    for b in range(4):
        swap = b % 2 == 1
        images[b, 0, :, slice(28, None) if swap else slice(None, 28)] = 1.0
    labels = [label if images[b, 0, 0, 0] > 0 else label[:, ::-1].copy() for b in range(4)]
    samples = [sample(lab, (56, 56), (112, 112)) for lab in labels]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = model(images, samples, mode='loss')['loss_seg']
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    model.eval()
    with torch.no_grad():
        preds = model(images, [sample(lab, (56, 56), (112, 112)) for lab in labels],
                      mode='predict')
    for pred, lab in zip(preds, labels):
        assert pred.pred_sem_seg.data.shape == (1, 112, 112)
        assert pred.seg_logits.data.shape == (3, 112, 112)
        big = np.kron(lab, np.ones((2, 2), dtype=np.int64))
        assert (pred.pred_sem_seg.data[0].numpy() == big).mean() > 0.9
    # A padded input: only the image's patches are read, at the image's original size.
    padded = images[:1].clone()
    padded[:, :, :, 28:] = 0.0
    with torch.no_grad():
        half = model(padded, [sample(labels[0][:, :28], (56, 28), (28, 14))], mode='predict')[0]
    assert half.pred_sem_seg.data.shape == (1, 28, 14)
    assert (half.pred_sem_seg.data == 1).float().mean() > 0.9


def test_save_pretrained_round_trips_and_a_mismatched_config_is_refused(tmp_path):
    torch.manual_seed(0)
    enc = CLIPVisionEncoder(vision_config=VCFG, select_layers=(-2, -3), frozen=False)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    enc.save_pretrained(str(tmp_path / 'tower'))
    back = CLIPVisionEncoder(pretrained=str(tmp_path / 'tower'), vision_config=VCFG,
                             select_layers=(-2, -3))
    x = torch.randn(2, 3, 56, 56)
    for a, b in zip(enc(x, [(56, 40), (30, 56)]), back(x, [(56, 40), (30, 56)])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match='hidden_size=64 in the config but 32 in the checkpoint'):
        CLIPVisionEncoder(pretrained=str(tmp_path / 'tower'), vision_config=dict(VCFG,
                                                                                 hidden_size=64))


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
    root = str(tmp_path_factory.mktemp('stage1_scenes'))
    generate_muse_scenes(root, num_train=40, num_val=2, seed=2, max_size=160)
    return root


@pytest.fixture(scope='module')
def stage_one(scenes, tmp_path_factory):
    """The stage-1 config trained by tools/train.py for 120 iterations on ``scenes``: its work
    dir and the training's output."""
    work = tmp_path_factory.mktemp('stage1') / 'work'
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', ENCODER_CFG, '--work-dir', str(work), '--cfg-options',
         f'train_dataloader.dataset.data_root={scenes}',
         'train_cfg.max_iters=120', 'default_hooks.checkpoint.interval=120',
         'default_hooks.logger.interval=20', 'log_processor.window_size=20'],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout + proc.stderr


def test_stage_one_trains_writes_the_tower_and_pixellm_loads_it(stage_one):
    """tools/train.py on the stage-1 config: the loss falls, SaveVisionEncoderHook writes the
    tower, and the demo config built with it holds exactly the trained weights."""
    from mmengine.registry import init_default_scope

    from pixellm.engine.checkpoint import load_checkpoint_safely
    from pixellm.registry import MODELS
    from pixellm.utils.config import load_config
    work, log = stage_one
    losses = [float(line.split('loss_seg: ')[1].split()[0]) for line in log.splitlines()
              if 'loss_seg: ' in line]
    assert len(losses) >= 6 and losses[-1] < 0.8 * losses[0], losses
    tower = work / 'vision_encoder'
    assert (tower / 'config.json').is_file()

    init_default_scope('pixellm')
    cfg = load_config(DEMO_CFG)
    cfg.model.vision_encoder.pretrained = str(tower)
    model = MODELS.build(cfg.model)
    model.init_weights()  # as the runner does before training
    state = load_checkpoint_safely(str(work / 'iter_120.pth'))['state_dict']
    trained = {k[len('vision_encoder.'):]: v for k, v in state.items()
               if k.startswith('vision_encoder.')}
    loaded = model.vision_encoder.state_dict()
    assert set(trained) == set(loaded)
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_stage_one_config_builds_and_reads_the_generated_data(scenes):
    from mmengine.registry import init_default_scope

    from pixellm.registry import DATASETS, MODELS
    from pixellm.utils.config import load_config
    init_default_scope('pixellm')
    cfg = load_config(ENCODER_CFG)
    ds_cfg = dict(cfg.train_dataloader.dataset, data_root=scenes)
    ds = DATASETS.build(ds_cfg)
    model = MODELS.build(cfg.model)
    batch = pseudo_collate([ds[i] for i in range(2)])
    data = model.data_preprocessor(batch, True)
    for s in data['data_samples']:
        values = set(torch.unique(s.gt_sem_seg.data).tolist())
        # Background and the generated shapes' category ids, all below num_classes.
        assert 0 in values and len(values) >= 2 and max(values) < cfg.model.num_classes
    assert model(**data, mode='loss')['loss_seg'].item() > 0


def numpy_iou(preds, gts, num_classes, ignore_index=255):
    """Per-class IoU and overall pixel accuracy, in percent, summed over images (NaN for a class
    in neither prediction nor label), counted with numpy from the label maps."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    correct = labelled = 0
    for pred, gt in zip(preds, gts):
        valid = gt != ignore_index
        for c in range(num_classes):
            inter[c] += np.sum(valid & (pred == c) & (gt == c))
            union[c] += np.sum(valid & ((pred == c) | (gt == c)))
        correct += np.sum(valid & (pred == gt))
        labelled += np.sum(valid)
    with np.errstate(invalid='ignore'):
        return 100 * inter / union, 100 * correct / labelled


def assert_table_shows(text, classes, iou):
    """``text`` holds IoUMetric's per-class table: a row per class, in order, with its IoU
    (``nan`` for a class in neither prediction nor label)."""
    rows = [[c.strip() for c in line.strip().strip('|').split('|')]
            for line in text.splitlines() if line.startswith('|')]
    assert rows[0][:2] == ['Class', 'IoU'], rows
    assert [r[0] for r in rows[1:]] == list(classes), rows
    for (name, shown, *_), value in zip(rows[1:], iou):
        if np.isnan(value):
            assert shown == 'nan', name
        else:
            assert float(shown) == pytest.approx(value, abs=0.006), name


def test_predictions_scored_by_mmseg_iou_metric_match_a_numpy_count():
    """The pretrainer's predict output goes through IoUMetric (built by name under pixellm's
    scope, fed by mmengine's Evaluator as the test loop feeds it) and gives the IoUs counted by
    hand. The model's patch logits are fixed: each patch column votes for one class, so the
    predicted map is known exactly (the column's pixels, at the original size)."""
    from mmengine.evaluator import Evaluator

    from conftest import captured_log_records
    classes = ('background', 'a', 'b', 'unused')
    model = pretrainer()
    # Patch-column classes of the 4x4 grid. Image 0 fills the 56x56 input; image 1 is 56x42
    # (three patch columns; the fourth is padding and must not be read), shown at 112x84.
    columns = [[0, 1, 1, 2], [2, 0, 1, 3]]
    logits = torch.zeros(2, len(classes), 4, 4)
    for b, cols in enumerate(columns):
        for j, c in enumerate(cols):
            logits[b, c, :, j] = 5.0
    # A loud padding column: read by the upsampling, it would take the image's last pixels.
    logits[1, 3, :, 3] = 50.0
    model._patch_logits = lambda inputs, valid_hw: logits
    shapes = [((56, 56), (56, 56)), ((56, 42), (112, 84))]
    expected = [np.repeat(np.array(columns[0]), 14)[None].repeat(56, 0),
                np.repeat(np.array(columns[1][:3]), 28)[None].repeat(112, 0)]
    rng = np.random.default_rng(3)
    gts = []
    for exp in expected:
        gt = rng.integers(0, 3, size=exp.shape)
        gt[rng.random(exp.shape) < 0.1] = 255
        # Agree with the prediction on a band, so that the IoUs differ by class.
        gt[:20] = exp[:20]
        gts.append(gt)
    samples = [sample(gt, img_shape, ori_shape) for gt, (img_shape, ori_shape) in zip(gts, shapes)]
    with torch.no_grad():
        preds = model(torch.zeros(2, 3, 56, 56), samples, mode='predict')
    for pred, exp in zip(preds, expected):
        np.testing.assert_array_equal(pred.pred_sem_seg.data[0].numpy(), exp)

    evaluator = Evaluator(dict(type='IoUMetric', iou_metrics=['mIoU']))
    evaluator.dataset_meta = dict(classes=classes)
    evaluator.process(preds)
    with captured_log_records() as records:
        result = evaluator.evaluate(len(preds))
    iou, acc = numpy_iou(expected, gts, len(classes))
    assert np.isnan(iou[3]) and not np.isnan(iou[:3]).any()
    assert result['mIoU'] == pytest.approx(np.nanmean(iou), abs=0.006)
    assert result['aAcc'] == pytest.approx(acc, abs=0.006)
    # The per-class table of the log: one row per class name with its IoU.
    table = next(r.getMessage() for r in records if ' Class ' in r.getMessage())
    assert_table_shows(table, classes, iou)


def test_stage_one_config_scores_each_val_image_with_iou_metric(scenes):
    """The stage-1 config's test split is the val images, one item each, with the six class
    names in label-value order; its evaluator is mmseg's IoUMetric."""
    from mmengine.registry import METRICS as ROOT_METRICS
    from mmseg.evaluation import IoUMetric

    from pixellm.registry import DATASETS
    from pixellm.utils.config import load_config
    from projects.pixellm_tiny_demo.pixellm_tiny_demo.muse_scenes import CATEGORY_IDS
    cfg = load_config(ENCODER_CFG)
    classes = tuple(cfg.test_dataloader.dataset.metainfo['classes'])
    assert classes[0] == 'background' and len(classes) == cfg.model.num_classes
    assert {name: classes.index(name) for name in classes[1:]} == CATEGORY_IDS
    metric = ROOT_METRICS.build(cfg.test_evaluator)
    assert type(metric) is IoUMetric and metric.metrics == ['mIoU']
    ds = DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=scenes))
    with open(osp.join(scenes, 'muse_val.json')) as f:
        val = json.load(f)
    assert len(ds) == len(val)
    assert tuple(ds.metainfo['classes']) == classes
    item = ds[0]['data_samples']
    assert item.gt_sem_seg.data.shape[-2:] == tuple(item.metainfo['ori_shape'])


def test_stage_one_test_prints_miou_and_the_per_class_table(stage_one, scenes, tmp_path):
    """tools/test.py on the stage-1 config and its checkpoint: mmseg's IoUMetric scores the val
    images; the printed mIoU, the --out json and the per-class table agree with the IoUs counted
    with numpy from the checkpoint's predictions."""
    from mmengine.dataset import pseudo_collate

    from pixellm.engine.checkpoint import load_checkpoint_safely
    from pixellm.registry import DATASETS, MODELS
    from pixellm.utils.config import load_config
    work, _ = stage_one
    out = tmp_path / 'metrics.json'
    proc = subprocess.run(
        [sys.executable, 'tools/test.py', ENCODER_CFG, str(work / 'iter_120.pth'), '--work-dir',
         str(tmp_path / 'test'), '--out', str(out), '--cfg-options',
         f'test_dataloader.dataset.data_root={scenes}'],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc'}
    assert f'mIoU: {metrics["mIoU"]:.4f}' in proc.stdout

    cfg = load_config(ENCODER_CFG)
    classes = tuple(cfg.test_dataloader.dataset.metainfo['classes'])
    ds = DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=scenes))
    model = MODELS.build(cfg.model).eval()
    model.load_state_dict(load_checkpoint_safely(str(work / 'iter_120.pth'))['state_dict'])
    with torch.no_grad():
        batch = model.data_preprocessor(pseudo_collate([ds[i] for i in range(len(ds))]), False)
        preds = model(**batch, mode='predict')
    iou, acc = numpy_iou([p.pred_sem_seg.data[0].numpy() for p in preds],
                         [p.gt_sem_seg.data[0].numpy() for p in preds], len(classes))
    assert metrics['mIoU'] == pytest.approx(np.nanmean(iou), abs=0.006)
    assert metrics['aAcc'] == pytest.approx(acc, abs=0.006)
    assert_table_shows(proc.stdout, classes, iou)
