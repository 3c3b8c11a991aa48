"""``tools/model_converters/deepspeed_to_pth.py``: a ZeRO checkpoint folder of ``tools/train.py
--deepspeed`` (trained on two gloo processes) becomes one fp32 ``.pth`` that a freshly built model
and ``tools/test.py`` load."""
import json
import re
import sys
import uuid

import pytest
import torch
from conftest import load_tool
from test_distributed import (TOY, TOY_DIST, _assert_close_weights, _deepspeed_module,
                              _dist_train)

from pixellm.engine import load_checkpoint_safely

ITERS = 2


def _converter():
    """``tools/model_converters/deepspeed_to_pth.py`` as a module."""
    return load_tool('model_converters/deepspeed_to_pth')


def _fresh_model():
    """A toy model as the distributed config builds it, before any training."""
    if TOY not in sys.path:  # the toy plugins, found by tools/train.py next to the config
        sys.path.insert(0, TOY)
    from pixellm_dist_toy import SeededEngineToyModel
    return SeededEngineToyModel(dropout=0.0)


def _train_deepspeed(work_dir, name):
    """Train the toy for ``ITERS`` iterations with DeepSpeed config ``name`` on 2 processes."""
    _dist_train(2, work_dir, '--deepspeed', name, '--cfg-options',
                f'train_cfg.max_iters={ITERS}', f'default_hooks.checkpoint.interval={ITERS}')
    return work_dir / f'iter_{ITERS}.pth'


@pytest.fixture(scope='module')
def zero2(tmp_path_factory):
    """A ZeRO-2 work dir after ``ITERS`` iterations and its checkpoint folder."""
    work_dir = tmp_path_factory.mktemp('zero2')
    return work_dir, _train_deepspeed(work_dir, 'zero2')


def test_zero2_folder_converts_to_the_final_weights_and_tools_test_loads_it(zero2, tmp_path,
                                                                           capsys):
    work_dir, folder = zero2
    out = tmp_path / 'zero2.pth'
    _converter().main([str(folder), str(out)])

    # The allow-listed loader accepts the file: the meta holds plain types only.
    ckpt = load_checkpoint_safely(str(out))
    assert set(ckpt) == {'state_dict', 'meta'}
    assert ckpt['meta']['iter'] == ITERS
    assert ckpt['meta']['converted_from'] == str(folder)
    state = ckpt['state_dict']
    assert all(v.dtype == torch.float32 for v in state.values())

    # Keys without a wrapper prefix, every weight equal to the DeepSpeed model's final one.
    model = _fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    final = _deepspeed_module(work_dir, ITERS)
    _assert_close_weights(model.state_dict(), final)
    assert any(not torch.equal(before[k], final[k]) for k in final)  # it trained

    # tools/test.py scores the converted checkpoint like the model loaded here.
    out_json = tmp_path / 'metrics.json'
    metrics = load_tool('test').main([
        TOY_DIST, str(out), '--work-dir', str(tmp_path / 'test'), '--out', str(out_json),
        '--cfg-options', 'test_dataloader.dataset.noise=0.0',
        f'experiment_name=ds-convert-{uuid.uuid4().hex[:8]}'])
    from pixellm_engine_toy import EngineToyDataset
    data = EngineToyDataset(length=8, noise=0.0)
    with torch.no_grad():
        pred = model.eval()(list(data.x))
    assert metrics['count'] == 8
    assert metrics['mse'] == pytest.approx(float(((pred - data.y) ** 2).mean()), rel=1e-5)
    assert json.loads(out_json.read_text())['count'] == 8
    # The folder itself is refused with a pointer to this converter.
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        load_tool('test').main([TOY_DIST, str(folder), '--work-dir', str(tmp_path / 'ds')])
    assert info.value.code == 2
    assert re.match(f'error: {re.escape(str(folder))}: .*DeepSpeed checkpoint folder.*'
                    'deepspeed_to_pth.py', capsys.readouterr().err.splitlines()[-1])


def test_work_dir_with_last_checkpoint_is_followed(zero2, tmp_path):
    work_dir, folder = zero2
    converter = _converter()
    assert converter.resolve_checkpoint_folder(str(work_dir)) == (str(work_dir), folder.name)


def test_zero3_shards_consolidate_to_the_zero2_weights(zero2, tmp_path_factory, tmp_path):
    # Same data, seed and schedule: ZeRO-3 trains the weights ZeRO-2 does, but partitions them,
    # so its model-state files hold no full weights and only the consolidation recovers them.
    work_dir2, _ = zero2
    folder3 = _train_deepspeed(tmp_path_factory.mktemp('zero3'), 'zero3')
    converter = _converter()
    state3 = converter.convert(str(folder3), str(tmp_path / 'zero3.pth'))['state_dict']
    model = _fresh_model()
    model.load_state_dict(state3, strict=True)
    _assert_close_weights(model.state_dict(), _deepspeed_module(work_dir2, ITERS))


def test_existing_output_needs_overwrite(zero2, tmp_path):
    _, folder = zero2
    out = tmp_path / 'out.pth'
    out.write_bytes(b'keep me')
    main = _converter().main
    with pytest.raises(SystemExit, match=r'out\.pth exists; pass --overwrite'):
        main([str(folder), str(out)])
    assert out.read_bytes() == b'keep me'
    main([str(folder), str(out), '--overwrite'])
    assert 'state_dict' in load_checkpoint_safely(str(out))


@pytest.mark.parametrize('kind', ['missing', 'file', 'empty', 'plain_work_dir'])
def test_paths_that_are_not_deepspeed_checkpoints_name_what_was_expected(tmp_path, kind):
    path = tmp_path / 'ckpt'
    if kind == 'file':
        torch.save(dict(state_dict={}), path)
    elif kind == 'empty':
        path.mkdir()
    elif kind == 'plain_work_dir':
        # A work dir of a non-DeepSpeed run: last_checkpoint names a plain .pth file.
        path.mkdir()
        torch.save(dict(state_dict={}), path / 'iter_2.pth')
        (path / 'last_checkpoint').write_text(str(path / 'iter_2.pth'))
    out = tmp_path / 'out.pth'
    with pytest.raises(SystemExit) as err:
        _converter().main([str(path), str(out)])
    message = str(err.value)
    assert f'{path} is not a DeepSpeed checkpoint' in message
    assert 'mp_rank_00_model_states.pt' in message and '_optim_states.pt' in message
    assert not out.exists()


def test_module_prefix_is_stripped_only_when_every_key_has_it():
    strip = _converter().strip_module_prefix
    weight = torch.zeros(1)
    assert list(strip({'module.fc1.weight': weight, 'module.fc2.bias': weight})) == [
        'fc1.weight', 'fc2.bias']
    assert list(strip({'module.fc1.weight': weight, 'fc2.bias': weight})) == [
        'module.fc1.weight', 'fc2.bias']
