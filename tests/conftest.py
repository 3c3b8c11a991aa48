"""Shared fixtures: the tiny model config, hand-made conversations with known targets, the tools
as modules and captured log records."""
import contextlib
import importlib.util
import logging
import os
import os.path as osp
import sys

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
TINY_MODEL_CFG = osp.join(REPO, 'configs', '_base_', 'models', 'pixellm_tiny.py')


@pytest.fixture(autouse=True, scope='session')
def _pixellm_scope():
    from mmengine.registry import init_default_scope
    init_default_scope('pixellm')
    import pixellm.models  # noqa: F401
    yield


def tiny_model_cfg(**overrides):
    """The tiny PixelLM model config as a plain dict (with the config's text processor, as
    ``load_config`` hands it out), with top-level overrides applied."""
    from pixellm.utils.config import load_config
    cfg = load_config(TINY_MODEL_CFG, import_plugins=False).model.to_dict()
    cfg.update(overrides)
    return cfg


def build_tiny(seed=0, **overrides):
    from pixellm.registry import MODELS
    torch.manual_seed(seed)
    return MODELS.build(tiny_model_cfg(**overrides))


def make_sample(model, num_targets, hw=(80, 100), ori=(160, 200), question='Segment them.',
                seed=0):
    """A data sample whose answer names ``num_targets`` targets, with random gt masks."""
    from mmengine.structures import InstanceData

    from pixellm.structures import PixelLMDataSample
    g = torch.Generator().manual_seed(seed)
    if num_targets:
        answer = 'They are ' + ' and '.join([model.codebook.target_text] * num_targets) + '.'
    else:
        answer = 'There is no such object.'
    user = dict(role='user', content=model.text_processor.image_turn(question))
    messages = [user, dict(role='assistant', content=answer)]
    enc = model.text_processor.encode_conversation(messages)
    sample = PixelLMDataSample(metainfo=dict(ori_shape=ori, img_path=f'img{seed}.png',
                                             question=question, answer=answer))
    sample.input_ids = enc['input_ids']
    sample.labels = enc['labels']
    sample.prompt_ids = model.text_processor.encode_prompt([user])
    sample.gt_instances = InstanceData(masks=torch.rand(num_targets, *ori, generator=g) > 0.5)
    image = torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=g)
    return image, sample


def make_batch(model, targets=(2, 0, 1)):
    images, samples = [], []
    for i, n in enumerate(targets):
        img, s = make_sample(model, n, hw=(80 - 10 * i, 100 - 20 * i), ori=(40 + 8 * i, 50),
                             seed=i)
        images.append(img)
        samples.append(s)
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), True)


def assert_trains_llm_not_decoder(model, value):
    """Backward ``value``: the LLM's attention weights get a gradient, the pixel decoder none."""
    model.zero_grad()
    value.backward()
    llm_grads = [p.grad for n, p in model.llm.named_parameters()
                 if p.requires_grad and 'self_attn' in n]
    assert llm_grads and any(g is not None and g.abs().sum() > 0 for g in llm_grads)
    assert all(p.grad is None for p in model.pixel_decoder.parameters())


def fit_loss_term(model, data, key, params, steps=30, lr=3e-3):
    """Minimise the model's loss term ``key`` on ``data`` with Adam over ``params``.

    Returns:
        tuple: The term's value before the first and after the last step.
    """
    opt = torch.optim.Adam(params, lr=lr)
    first = value = None
    for _ in range(steps):
        value = model(**data, mode='loss')[key]
        first = value.item() if first is None else first
        opt.zero_grad()
        value.backward()
        opt.step()
    return first, value.item()


def run_python(*args, timeout=300, threads=None):
    """Run ``python *args`` from the repository root (with ``threads`` OpenMP/MKL threads when
    given); fail with its output's tail unless it exits 0; return stdout and stderr."""
    import subprocess
    env = None
    if threads is not None:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def load_tool(name):
    """``tools/<name>.py`` as a module, to call its ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location(f'pixellm_tools_{name}',
                                                  osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def captured_log_records():
    r"""Collect the ``logging.LogRecord``\ s of mmengine's current logger inside the block."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


DEMO_CONFIG = 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py'


# The demo config's auxiliary context loss slows the text loss in the first iterations: at 150
# the model wrote no codebook tokens yet.
TRAINED_TINY_ITERS = 250


@pytest.fixture(scope='session')
def trained_tiny(tmp_path_factory):
    """A small generated MUSE-format dataset and the tiny PixelLM trained on it for
    ``TRAINED_TINY_ITERS`` iterations by ``tools/train.py`` (about a minute on 2 cores): enough
    to write targets in its answers. Returns ``dict(config, checkpoint, data_root,
    cfg_options)``, where ``cfg_options`` point the config's dataloaders at the data (single
    process, batch 1 for testing).
    """
    from projects.pixellm_tiny_demo.pixellm_tiny_demo import generate_muse_scenes
    root = tmp_path_factory.mktemp('trained_tiny')
    data_root = str(root / 'data')
    generate_muse_scenes(data_root, num_train=160, num_val=6, seed=5, max_size=192)
    cfg_options = [f'train_dataloader.dataset.data_root={data_root}',
                   f'test_dataloader.dataset.data_root={data_root}',
                   'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
                   'test_dataloader.num_workers=0', 'test_dataloader.batch_size=1']
    work = root / 'work'
    run_python('tools/train.py', DEMO_CONFIG, '--work-dir', str(work), '--cfg-options',
               *cfg_options, f'train_cfg.max_iters={TRAINED_TINY_ITERS}',
               f'default_hooks.checkpoint.interval={TRAINED_TINY_ITERS}', timeout=600)
    return dict(config=DEMO_CONFIG, checkpoint=str(work / f'iter_{TRAINED_TINY_ITERS}.pth'),
                data_root=data_root, cfg_options=cfg_options)
