"""The PixelLM-7B/13B recipes and evaluation configs: they load, their model is the base model,
their data sections build and run, the schedule is the official one, and the flag and command tables
of configs/pixellm/README.md hold for them."""
import ast
import json
import math
import os
import os.path as osp
import pickle
import re
import shlex
import shutil

import numpy as np
import pytest
import torch
from conftest import REPO, load_tool
from mmengine.optim.scheduler import LinearLR
from PIL import Image
from torch.utils.data import Dataset

from pixellm.datasets.mix_dataset import SampleRateMixDataset
from pixellm.datasets.preflight import MissingDataError, check_data_paths
from pixellm.models.meta_build import build_on_meta, count_parameters
from pixellm.registry import DATASETS, MODELS
from pixellm.structures import PixelLMDataSample
from pixellm.utils import load_config

CONFIGS = osp.join(REPO, 'configs', 'pixellm')
MODEL_CONFIGS = osp.join(REPO, 'configs', '_base_', 'models')
README = osp.join(CONFIGS, 'README.md')
RECIPES = {'7b': 'pixellm_7b_lora_8xb2_ga10_5k_mix.py', '13b': 'pixellm_13b_lora_8xb2_ga10_5k_mix.py'}
BENCHMARKS = ('muse', 'reasonseg', 'refcoco', 'grefcoco')
EVAL_CONFIGS = [f'pixellm_{size}_eval_{bench}.py' for size in RECIPES for bench in BENCHMARKS]
TINY_TOKENIZER = dict(type='TinyTokenizer', model_max_length=512)
# Every split the paper evaluates on, as (benchmark, split) of the README's test table.
REQUIRED_SPLITS = {('MUSE', s) for s in ('val', 'test_less', 'test_many')} | {
    ('ReasonSeg', 'val'), ('ReasonSeg', 'test')} | {
    (b, s) for b in ('refCOCO', 'refCOCO+', 'gRefCOCO') for s in ('val', 'testA', 'testB')} | {
    ('refCOCOg (umd)', 'val'), ('refCOCOg (umd)', 'test')}


def recipe(size, **cfg_options):
    return load_config(osp.join(CONFIGS, RECIPES[size]), cfg_options=cfg_options or None)


def pipelines(cfg):
    """Every pipeline of the train mix, the validation and the test set of a config."""
    out = [src['pipeline'] for sources in cfg.train_dataloader.dataset.groups.values()
           for src in sources]
    return out + [cfg.val_dataloader.dataset.pipeline, cfg.test_dataloader.dataset.pipeline]


def steps(pipeline, kind):
    return [step for step in pipeline if step['type'] == kind]


# ------------------------------------------------------------------------------ loading

@pytest.mark.parametrize('name', list(RECIPES.values()) + EVAL_CONFIGS)
def test_every_config_loads_and_its_test_set_builds_without_data(name):
    cfg = load_config(osp.join(CONFIGS, name))
    assert cfg.model.type == 'PixelLM'
    dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, lazy_init=True))
    assert dataset.test_mode and dataset.data_root == 'dataset/'
    assert cfg.test_evaluator.type == 'ReasonSegMetric'


@pytest.mark.parametrize('size', RECIPES)
def test_recipe_model_on_meta_is_the_base_model(size):
    """The recipe's model (shared codebook/tokenizer, padding statistics) has exactly the
    parameters of configs/_base_/models, which test_param_count.py checks against the official
    architecture."""
    base = load_config(osp.join(MODEL_CONFIGS, f'pixellm_{size}.py')).model
    model_cfg = recipe(size).model
    model = build_on_meta(model_cfg)
    assert count_parameters(model) == count_parameters(build_on_meta(base))
    assert model.codebook.num_scales == 2 and model.codebook.tokens_per_scale == 3
    assert model.data_preprocessor.size == 448
    # Padded CLIP inputs are normalised with SAM's ImageNet statistics, as officially.
    preprocessor = MODELS.build(model_cfg.data_preprocessor)
    image = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    batch = preprocessor(dict(inputs=[image], data_samples=[PixelLMDataSample()]))['inputs']
    expected = (255 - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375])
    assert torch.allclose(batch[0, :, 0, 0], expected)


@pytest.mark.parametrize('size', RECIPES)
def test_model_settings_reach_every_pipeline(size):
    cfg = recipe(size)
    model = cfg.model
    for pipeline in pipelines(cfg):
        assert [s['type'] for s in pipeline[-4:]] == [
            'ExpandSegTokens', 'TokenizeConversation', 'ResizeLongestSide', 'PackPixelLMInputs']
        expand, tokenize, resize = pipeline[-4], pipeline[-3], pipeline[-2]
        # One text processor, the config's, in the model and in both text steps.
        assert expand['text_processor'] == model.text_processor == tokenize['text_processor'] \
            == cfg.text_processor
        text = model.text_processor
        assert text.codebook == dict(type='SegCodebook', num_scales=2, tokens_per_scale=3)
        assert text.use_im_start_end is True and text.chat_template == 'vicuna_v1'
        assert text.tokenizer.name_or_path == model.llm.pretrained
        assert resize['size'] == model.vision_encoder.image_size == 448
    train_lengths = {steps(p, 'TokenizeConversation')[0]['max_length']
                     for p in pipelines(cfg)[:-2]}
    assert train_lengths == {512 - (16 * 16 - 1)}
    assert steps(cfg.val_dataloader.dataset.pipeline, 'TokenizeConversation')[0][
        'max_length'] is None


def test_13b_recipe_differs_from_7b_only_in_the_llm():
    cfg7, cfg13 = recipe('7b').to_dict(), recipe('13b').to_dict()
    path7, path13 = cfg7['model']['llm']['pretrained'], cfg13['model']['llm']['pretrained']
    assert path13 == 'llava-llama-2-13b-chat-lightning-preview'

    def as_7b(value):
        if isinstance(value, dict):
            return {k: as_7b(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(as_7b(v) for v in value)
        return path7 if value == path13 else value

    shapes = {'llama_7b', 'llama2_13b', 'llava_path'}
    model7, model13 = cfg7.pop('model'), as_7b(cfg13.pop('model'))
    assert model13['llm'].pop('llm_config') != model7['llm'].pop('llm_config')
    assert model13 == model7
    assert {k: v for k, v in as_7b(cfg13).items() if k not in shapes} == \
        {k: v for k, v in cfg7.items() if k not in shapes}


# ------------------------------------------------------------------------------ data

def test_train_mix_groups_rates_and_length():
    cfg = recipe('7b')
    mix = cfg.train_dataloader.dataset
    assert mix.type == 'SampleRateMixDataset'
    assert list(mix.groups) == ['sem_seg', 'refer_seg', 'vqa', 'multi_reason_seg']
    assert tuple(mix.sample_rates) == (2, 9, 2, 4)
    # batch 2 x 10 accumulation x 500 steps x 8 GPUs per epoch, 10 epochs.
    assert mix.num_samples == 2 * 10 * 500 * 8 * 10 == cfg.samples_per_epoch * cfg.epochs
    assert [len(mix.groups[g]) for g in mix.groups] == [5, 4, 1, 1]
    # Every source builds without its data; the mix accepts the arguments.
    for sources in mix.groups.values():
        for source in sources:
            DATASETS.build(dict(source, lazy_init=True))
    stand_ins = {name: [_Stub(len(sources))] for name, sources in mix.groups.items()}
    built = SampleRateMixDataset(stand_ins, mix.sample_rates, mix.num_samples, mix.seed)
    assert len(built) == 800000
    assert np.allclose(built.probabilities, np.array([2, 9, 2, 4]) / 17)


class _Stub(Dataset):

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return index


def _image(path, h, w, value=100):
    os.makedirs(osp.dirname(path), exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)


def _box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_official_layout(root):
    """One small item per dataset of the mix and of the benchmarks, in the official layout."""
    root = str(root)
    # ADE20K: a label map with classes 1 (wall) and 3 (sky) and the ignored 0.
    _image(osp.join(root, 'ade20k/images/training/ADE_train_1.jpg'), 12, 16)
    label = np.zeros((12, 16), dtype=np.uint8)
    label[:6], label[6:, :8] = 1, 3
    os.makedirs(osp.join(root, 'ade20k/annotations/training'))
    Image.fromarray(label).save(osp.join(root, 'ade20k/annotations/training/ADE_train_1.png'))
    # refCOCO: one image, one object, a train and a val expression.
    coco2014 = 'refer_seg/images/mscoco/images/train2014'
    _image(osp.join(root, coco2014, 'COCO_train2014_1.jpg'), 20, 24)
    os.makedirs(osp.join(root, 'refer_seg/refcoco'))
    refs = [dict(ref_id=1, ann_id=7, image_id=1, category_id=1, split=split,
                 sentences=[dict(sent=text, sent_id=k)])
            for k, (split, text) in enumerate([('train', 'left man'), ('val', 'the man')])]
    with open(osp.join(root, 'refer_seg/refcoco/refs(unc).p'), 'wb') as f:
        pickle.dump(refs, f)
    with open(osp.join(root, 'refer_seg/refcoco/instances.json'), 'w') as f:
        json.dump(dict(images=[dict(id=1, file_name='COCO_train2014_1.jpg', height=20, width=24)],
                       annotations=[dict(id=7, image_id=1, category_id=1,
                                         segmentation=_box_polygon(2, 2, 10, 12))],
                       categories=[dict(id=1, name='person')]), f)
    # LLaVA-Instruct: one two-turn record.
    _image(osp.join(root, 'coco/train2017/000000000009.jpg'), 10, 14)
    os.makedirs(osp.join(root, 'llava_dataset'))
    with open(osp.join(root, 'llava_dataset/llava_instruct_150k.json'), 'w') as f:
        json.dump([dict(id='9', image='000000000009.jpg', conversations=[
            {'from': 'human', 'value': '<image>\nWhat is shown?'},
            {'from': 'gpt', 'value': 'A grey square.'}])], f)
    # MUSE: the repository's two-record file (a train2014 and a train2017 image) as train and val.
    tiny = osp.join(REPO, 'tests', 'data', 'muse_tiny')
    os.makedirs(osp.join(root, 'muse'))
    for split in ('train', 'val'):
        shutil.copy(osp.join(tiny, 'muse_tiny.json'), osp.join(root, 'muse', f'muse_{split}.json'))
    shutil.copy(osp.join(tiny, 'images', 'img_0.png'), osp.join(root, coco2014, 'img_0.png'))
    os.makedirs(osp.join(root, 'refer_seg/images/mscoco/images/train2017'))
    os.makedirs(osp.join(root, 'refer_seg/images/mscoco/images/val2017'))
    shutil.copy(osp.join(tiny, 'images', '000000000123.png'),
                osp.join(root, 'refer_seg/images/mscoco/images/train2017/000000000123.png'))
    # ReasonSeg val: one labelme record.
    _image(osp.join(root, 'reason_seg/ReasonSeg/val/r1.jpg'), 16, 16)
    with open(osp.join(root, 'reason_seg/ReasonSeg/val/r1.json'), 'w') as f:
        json.dump(dict(text=['What holds water?'], is_sentence=True, shapes=[
            dict(label='target', points=[[2, 2], [10, 2], [10, 10], [2, 10]])]), f)
    return root


@pytest.fixture(scope='module')
def official_root(tmp_path_factory):
    return write_official_layout(tmp_path_factory.mktemp('dataset'))


def on_fixture(dataset_cfg, root):
    """A dataset config on the fixture: the fixture's data_root, the shipped tiny tokenizer."""
    cfg = dict(dataset_cfg, data_root=root, serialize_data=False)
    cfg['pipeline'] = [dict(s, text_processor=dict(s['text_processor'], tokenizer=TINY_TOKENIZER))
                       if 'text_processor' in s else s for s in dataset_cfg['pipeline']]
    return cfg


def fixture_mix(root):
    """The 7B recipe's mix with one fixture source per group (ADE20K, refCOCO, LLaVA, MUSE)."""
    mix = recipe('7b').train_dataloader.dataset.to_dict()
    keep = dict(sem_seg='ADE20KSemSegDataset', refer_seg='refcoco', vqa='LLaVAInstructDataset',
                multi_reason_seg='MUSEDataset')
    mix['groups'] = {
        name: [on_fixture(s, root) for s in sources
               if keep[name] in (s['type'], s.get('dataset_name'))]
        for name, sources in mix['groups'].items()
    }
    return mix


def _tokenizer(dataset):
    return next(t.text_processor.tokenizer for t in dataset.pipeline.transforms
                if type(t).__name__ == 'TokenizeConversation')


def _check_packed(packed, tokenizer, num_targets=None):
    sample = packed['data_samples']
    assert max(packed['inputs'].shape[1:]) == 448
    masks = sample.gt_instances.masks
    if num_targets is not None:
        assert masks.shape[0] == num_targets
    ids = sample.input_ids.tolist()
    seg0, im_start = tokenizer.convert_tokens_to_ids(['[SEG0]', '<im_start>'])
    assert ids.count(seg0) == masks.shape[0]  # one codebook group per target
    assert im_start in ids
    assert (sample.labels != -100).any()


def test_every_group_of_the_mix_runs_its_pipeline_on_the_official_layout(official_root):
    mix = DATASETS.build(fixture_mix(official_root))
    seen = {}
    for index in range(200):
        group = mix.group_names[mix.locate(index)[0]]
        if group not in seen:
            seen[group] = index
    assert set(seen) == set(mix.group_names)
    for group, index in seen.items():
        source = mix.groups[mix.group_names.index(group)][0]
        _check_packed(mix[index], _tokenizer(source), num_targets=0 if group == 'vqa' else None)


@pytest.mark.parametrize('bench, targets', [('muse', 2), ('reasonseg', 1), ('refcoco', 1)])
def test_eval_pipelines_run_on_the_official_layout(official_root, bench, targets):
    cfg = load_config(osp.join(CONFIGS, f'pixellm_7b_eval_{bench}.py'))
    dataset = DATASETS.build(on_fixture(cfg.test_dataloader.dataset, official_root))
    packed = dataset[0]
    _check_packed(packed, _tokenizer(dataset), num_targets=targets)
    # Deterministic wording: the same question and answer on every fetch.
    assert packed['data_samples'].answer == dataset[0]['data_samples'].answer


def test_preflight_passes_on_the_layout_and_names_a_missing_file(official_root, tmp_path):
    cfg = recipe('7b')
    cfg.train_dataloader.dataset = fixture_mix(official_root)
    cfg.val_dataloader.dataset = on_fixture(cfg.val_dataloader.dataset, official_root)
    check_data_paths(cfg, ('train_dataloader', 'val_dataloader'))

    partial = shutil.copytree(official_root, tmp_path / 'partial')
    os.remove(partial / 'refer_seg' / 'refcoco' / 'instances.json')
    cfg.train_dataloader.dataset = fixture_mix(str(partial))
    with pytest.raises(MissingDataError) as err:
        check_data_paths(cfg, ('train_dataloader', ))
    missing = osp.join(str(partial), 'refer_seg/refcoco/instances.json')
    assert [m.path for m in err.value.missing] == [missing]
    assert 'train_dataloader.dataset.groups.refer_seg[0]' in str(err.value)
    assert 'docs/datasets.md' in str(err.value)


def test_tools_exit_before_building_the_model_when_data_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data_root 'dataset/' does not exist here
    with pytest.raises(SystemExit) as err:
        load_tool('train').main([osp.join(CONFIGS, RECIPES['7b'])])
    text = str(err.value)
    assert text.startswith('tools/train.py: ')
    assert "'dataset/muse/muse_train.json'" in text and "'dataset/reason_seg/ReasonSeg/val'" in text
    assert "'dataset/refer_seg/images/mscoco/images/train2017'" in text  # MUSE's coco_url images
    assert 'docs/datasets.md' in text and "data_root 'dataset/' itself does not exist" in text

    ckpt = tmp_path / 'model.pth'
    ckpt.write_bytes(b'')
    with pytest.raises(SystemExit) as err:
        load_tool('test').main([osp.join(CONFIGS, 'pixellm_13b_eval_refcoco.py'), str(ckpt),
                            '--cfg-options', 'test_dataloader.dataset.dataset_name=refcocog'])
    text = str(err.value)
    assert text.startswith('tools/test.py: ')
    assert "'dataset/refer_seg/refcocog/refs(umd).p'" in text and 'docs/datasets.md' in text
    assert "'dataset/muse" not in text  # only the test set is checked


# ------------------------------------------------------------------------------ schedule

def deepspeed_warmup_decay(step, total=5000, warmup=100):
    """DeepSpeed WarmupDecayLR's factor after ``step`` optimizer steps (linear warm-up)."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / (total - warmup))


def test_schedule_follows_warmup_decay_in_optimizer_steps():
    cfg = recipe('7b')
    accumulation = cfg.optim_wrapper.accumulative_counts
    assert accumulation == 10 and cfg.train_cfg.max_iters == 5000 * accumulation
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = []
    for spec in cfg.param_scheduler:
        spec = dict(spec)
        assert spec.pop('type') == 'LinearLR'
        schedulers.append(LinearLR(optimizer, **spec))
    lr = cfg.optim_wrapper.optimizer.lr
    for iteration in range(cfg.train_cfg.max_iters):
        if (iteration + 1) % accumulation == 0:  # the iteration whose backward steps AdamW
            step = iteration // accumulation
            factor = optimizer.param_groups[0]['lr'] / lr
            # Within one optimizer step of DeepSpeed's schedule.
            assert abs(factor - deepspeed_warmup_decay(step)) <= 0.011, (step, factor)
        for scheduler in schedulers:
            scheduler.step()


# ------------------------------------------------------------------------------ README tables

def _cells(line):
    return [c.strip().replace('\\|', '|') for c in re.split(r'(?<!\\)\|', line.strip())[1:-1]]


def readme_tables(text):
    """``{section heading: [row cells, ...]}`` of every table under a ``##``/``###`` heading."""
    tables, heading = {}, None
    for line in text.splitlines():
        if line.startswith('#'):
            heading = line.lstrip('#').strip()
        elif line.startswith('|') and heading is not None:
            cells = _cells(line)
            if not set(''.join(cells)) <= set('-: '):
                tables.setdefault(heading, []).append(cells)
    return tables


def resolve(cfg, key):
    """Values at a README key: dotted names, ``*`` (all values), ``[*]``, ``[k]``, ``[type=X]``."""
    values = [cfg]
    for segment in key.split('.'):
        name, selectors = re.fullmatch(r'([^\[]*)((?:\[[^\]]*\])*)', segment).groups()
        if name == '*':
            values = [v for value in values for v in value.values()]
        elif name:
            values = [value[name] for value in values]
        for selector in re.findall(r'\[([^\]]*)\]', selectors):
            if selector == '*':
                values = [v for value in values for v in value]
            elif selector.startswith('type='):
                values = [v for value in values for v in value if v['type'] == selector[5:]]
            else:
                values = [value[int(selector)] for value in values]
    return values


def _same(a, b):
    if isinstance(a, dict) and isinstance(b, list):
        a = list(a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-9))
    return type(a) is type(b) and a == b


def flag_tables():
    tables = readme_tables(open(README).read())
    found = {}
    for heading, rows in tables.items():
        match = re.search(r'`(pixellm_\w+\.py)`', heading)
        if match and rows[0][:4] == ['official flag', 'official value', 'config key',
                                     'value here']:
            found[match.group(1)] = rows[1:]
    return found


def test_readme_has_a_flag_table_per_recipe_naming_every_flag_of_the_command():
    tables = flag_tables()
    assert set(tables) == set(RECIPES.values())
    text = open(README).read()
    command = text.split('The official command, verbatim:')[1].split('```')[1]
    flags = set(re.findall(r'(--[\w-]+)=?', command))
    assert len(flags) == 18
    named = {flag for row in tables[RECIPES['7b']] for flag in re.findall(r'`(--[\w-]+)`', row[0])}
    assert flags <= named, sorted(flags - named)
    # The train_ds.py defaults the recipe depends on are in the table too.
    assert {'--lr', '--epochs', '--steps_per_epoch', '--grad_accumulation_steps', '--conv_type',
            '--model_max_length', '--lora_r', '--ce_loss_weight', '--dice_loss_weight',
            '--bce_loss_weight', '--explanatory', '--val_dataset'} <= named


@pytest.mark.parametrize('config', list(RECIPES.values()))
def test_readme_flag_table_matches_the_recipe(config):
    cfg = load_config(osp.join(CONFIGS, config))
    tables = flag_tables()
    rows = tables[config]
    # The 13B table lists what differs; the 7B rows hold for it otherwise.
    own = {(row[0], row[2]) for row in rows}
    rows += [row for row in tables[RECIPES['7b']] if (row[0], row[2]) not in own]
    checked = 0
    for flag, _, key, value, notes in rows:
        if key == '—':
            assert value == '—' and notes, f'{flag}: a flag without a config key needs a note'
            continue
        key, value = key.strip('`'), ast.literal_eval(value.strip('`'))
        found = resolve(cfg, key)
        assert found, f'{flag}: {key} selects nothing in {config}'
        wildcard = '*' in key or '[type=' in key
        assert (wildcard and _same(found, value)) or all(_same(v, value) for v in found), \
            f'{flag}: {key} is {found} in {config}, the README says {value!r}'
        checked += 1
    assert checked >= 50


def test_readme_key_resolution_catches_a_wrong_value():
    cfg = recipe('7b')
    key = 'train_dataloader.dataset.groups.*[*].pipeline[type=TokenizeConversation].max_length'
    assert len(resolve(cfg, key)) == 11 and set(resolve(cfg, key)) == {257}
    assert not all(_same(v, 512) for v in resolve(cfg, key))
    assert not _same(resolve(cfg, 'model.llm.lora.r')[0], 8.5)


def _check_split(dataset, benchmark, split):
    if benchmark == 'MUSE':
        assert dataset.ann_file == osp.join('dataset', 'muse', f'muse_{split}.json')
    elif benchmark == 'ReasonSeg':
        assert dataset.splits == [split]
    else:
        name = {'refCOCO': 'refcoco', 'refCOCO+': 'refcoco+', 'refCOCOg (umd)': 'refcocog',
                'gRefCOCO': 'grefcoco'}[benchmark]
        assert (dataset.dataset_name, dataset.split) == (name, split)
        assert dataset.split_by == ('umd' if name == 'refcocog' else 'unc')
        if name == 'grefcoco':
            assert dataset.merge_targets


@pytest.mark.parametrize('size', RECIPES)
def test_readme_test_commands_reach_every_split(size):
    rows = readme_tables(open(README).read())['Test']
    assert rows[0] == ['benchmark', 'split', 'command']
    parse_args = load_tool('test').parse_args
    covered = set()
    for benchmark, split, command in rows[1:]:
        argv = shlex.split(command.strip('`').replace('pixellm_7b_', f'pixellm_{size}_'))
        assert argv[:2] == ['python', 'tools/test.py'] and argv[3] == 'CKPT'
        args = parse_args(argv[2:])
        cfg = load_config(osp.join(REPO, args.config), cfg_options=args.cfg_options)
        dataset = DATASETS.build(dict(cfg.test_dataloader.dataset, lazy_init=True))
        _check_split(dataset, benchmark, split)
        covered.add((benchmark, split))
    assert covered == REQUIRED_SPLITS
