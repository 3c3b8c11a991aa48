"""A user's mistake ends every tool with one line, ``error: <file>: <what>``, before anything is
written; ``--debug`` / ``PIXELLM_DEBUG=1`` give the traceback; ``tools/test.py`` keeps its records
in its own folder."""
import glob
import json
import os
import os.path as osp
import pickle
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
from conftest import load_tool
from PIL import Image

from pixellm.engine import BadCheckpointError, UntrustedCheckpointError
from pixellm.utils.cli import cli_main, register_user_error

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY_ITER = osp.join(REPO, 'tests', 'test_engine', 'toy', 'toy_iter.py')
DEMO = osp.join(REPO, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py')
# What the line of each bad checkpoint says after ``error: <file>: ``.
REASONS = dict(empty='checkpoint is empty', garbage='checkpoint is not a torch checkpoint',
               truncated='checkpoint is truncated', malicious_zip='refusing to unpickle',
               malicious_pickle='refusing to unpickle', missing='checkpoint does not exist')


def _name():
    # In-process runs share mmengine's singletons, keyed by "<experiment>_<timestamp>".
    return f'experiment_name=user-errors-{uuid.uuid4().hex[:8]}'


class _Shell:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A toy training run: its work dir (with the config dump) and checkpoint."""
    work = tmp_path_factory.mktemp('toy') / 'train'
    load_tool('train').main([TOY_ITER, '--work-dir', str(work), '--cfg-options',
                             'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2',
                             _name()])
    return dict(work_dir=work, checkpoint=str(work / 'iter_2.pth'))


@pytest.fixture(scope='module')
def bad(trained, tmp_path_factory):
    """One file per kind of bad checkpoint, and the marker a malicious one would create."""
    root = tmp_path_factory.mktemp('bad')
    marker = root / 'PWNED'
    files = {kind: root / f'{kind}.pth' for kind in REASONS}
    files['empty'].write_bytes(b'')
    files['garbage'].write_bytes(b'these are not the weights you are looking for\n' * 20)
    whole = open(trained['checkpoint'], 'rb').read()
    files['truncated'].write_bytes(whole[:len(whole) // 2])
    torch.save({'state_dict': {}, 'meta': {'x': _Shell(str(marker))}},
               str(files['malicious_zip']))
    files['malicious_pickle'].write_bytes(pickle.dumps(_Shell(str(marker))))
    return dict(files={k: str(v) for k, v in files.items()}, marker=marker)


def _last_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ''


def _assert_one_line(exc_info, capsys, path, reason, code=2):
    assert exc_info.value.code == code
    out, err = capsys.readouterr()
    assert 'Traceback' not in out + err
    line = _last_line(err)
    assert line.startswith(f'error: {path}: {reason}'), err[-2000:]
    return line


@pytest.mark.parametrize('kind', sorted(REASONS))
def test_test_tool_reports_a_bad_checkpoint_before_writing(kind, bad, tmp_path, capsys):
    path = bad['files'][kind]
    work = tmp_path / 'work'
    with pytest.raises(SystemExit) as info:
        load_tool('test').main([TOY_ITER, path, '--work-dir', str(work), '--cfg-options',
                                _name()])
    line = _assert_one_line(info, capsys, path, REASONS[kind])
    if kind.startswith('malicious'):
        assert 'posix.system' in line and '--trust-checkpoint' in line
    assert not bad['marker'].exists()  # the command in the file never ran
    assert not work.exists()  # nothing written: the check runs before the runner is built


def test_debug_flag_gives_the_traceback_instead(bad, tmp_path):
    test_main = load_tool('test').main
    with pytest.raises(BadCheckpointError, match='truncated'):
        test_main([TOY_ITER, bad['files']['truncated'], '--work-dir', str(tmp_path / 'w'),
                   '--debug', '--cfg-options', _name()])
    os.environ['PIXELLM_DEBUG'] = '1'
    try:
        with pytest.raises(UntrustedCheckpointError, match='posix.system'):
            test_main([TOY_ITER, bad['files']['malicious_zip'], '--work-dir',
                       str(tmp_path / 'w'), '--cfg-options', _name()])
    finally:
        del os.environ['PIXELLM_DEBUG']
    assert not bad['marker'].exists()


def _run(*args, env=None):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, timeout=300,
                          env=dict(os.environ, **(env or {})))
    return proc.returncode, proc.stdout.decode(errors='replace'), \
        proc.stderr.decode(errors='replace')


def test_test_tool_as_a_user_runs_it(bad, tmp_path):
    path = bad['files']['malicious_pickle']
    rc, out, err = _run('tools/test.py', TOY_ITER, path, '--work-dir', str(tmp_path / 'w'))
    assert rc == 2 and 'Traceback' not in out + err
    assert _last_line(err).startswith(f'error: {path}: refusing to unpickle the checkpoint: '
                                      'it contains posix.system')
    assert not bad['marker'].exists() and not (tmp_path / 'w').exists()
    path = bad['files']['garbage']
    rc, out, err = _run('tools/test.py', TOY_ITER, path, '--work-dir', str(tmp_path / 'w'),
                        '--debug')
    assert rc == 1 and 'Traceback' in err and 'BadCheckpointError' in _last_line(err)


def test_train_that_fails_its_checks_writes_nothing(bad, tmp_path, capsys):
    train_main = load_tool('train').main
    work = tmp_path / 'work'
    garbage = bad['files']['garbage']
    for argv in (['--resume', garbage], ['--cfg-options', f'load_from={garbage}']):
        with pytest.raises(SystemExit) as info:
            train_main([TOY_ITER, '--work-dir', str(work), *argv])
        _assert_one_line(info, capsys, garbage, REASONS['garbage'])
        assert not work.exists()
    cases = (('model.type=NoSuchModel', "model.type: 'NoSuchModel' is not registered"),
             ('model.no_such_arg=1', "model: EngineToyModel got unexpected keyword argument(s) "
                                     "'no_such_arg'"))
    for option, reason in cases:
        with pytest.raises(SystemExit) as info:
            train_main([TOY_ITER, '--work-dir', str(work), '--cfg-options', option])
        _assert_one_line(info, capsys, TOY_ITER, reason)
        assert not work.exists()


def test_resume_from_a_broken_last_checkpoint_keeps_the_work_dir(trained, bad, tmp_path,
                                                                 capsys):
    # A copy of the training run whose last_checkpoint names a truncated file.
    work = tmp_path / 'run'
    work.mkdir()
    dump = open(trained['work_dir'] / 'toy_iter.py', 'rb').read()
    (work / 'toy_iter.py').write_bytes(dump)
    (work / 'last_checkpoint').write_text(bad['files']['truncated'])
    before = sorted(os.listdir(work))
    rc, out, err = _run('tools/train.py', TOY_ITER, '--work-dir', str(work), '--resume')
    assert rc == 2 and 'Traceback' not in out + err
    assert _last_line(err).startswith(f'error: {bad["files"]["truncated"]}: checkpoint is '
                                      'truncated')
    assert sorted(os.listdir(work)) == before
    assert (work / 'toy_iter.py').read_bytes() == dump


def test_test_runs_keep_their_records_apart(trained, tmp_path, capsys):
    work = trained['work_dir']
    dump = work / 'toy_iter.py'
    before = dump.read_bytes()
    folders_before = {p for p in os.listdir(work) if osp.isdir(work / p)}
    out_json = tmp_path / 'copy.json'
    test_main = load_tool('test').main
    first = test_main([TOY_ITER, trained['checkpoint'], '--work-dir', str(work), '--out',
                       str(out_json), '--cfg-options', _name()])
    test_main([TOY_ITER, trained['checkpoint'], '--work-dir', str(work), '--cfg-options',
               'test_dataloader.batch_size=2', _name()])
    assert dump.read_bytes() == before
    new = sorted({p for p in os.listdir(work) if osp.isdir(work / p)} - folders_before)
    assert len(new) == 2
    for folder, batch_size in zip(new, (None, 2)):
        files = os.listdir(work / folder)
        assert 'toy_iter.py' in files and any(f.endswith('.log') for f in files)
        metrics = json.load(open(work / folder / 'test_metrics.json'))
        assert metrics['count'] == first['count']
        dumped = open(work / folder / 'toy_iter.py').read()
        if batch_size:  # each folder holds the config of its own run
            assert 'batch_size=2' in dumped
    assert json.load(open(out_json)) == json.load(open(work / new[0] / 'test_metrics.json'))
    assert f'Records of this test (log, config, test_metrics.json): {work / new[0]}' in \
        capsys.readouterr().out


def _image(tmp_path):
    path = tmp_path / 'scene.png'
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_chat_reports_undecodable_text_and_bad_checkpoints(bad, tmp_path):
    image = _image(tmp_path)
    # Argument bytes that are not UTF-8 reach Python as lone surrogates.
    proc = subprocess.run([sys.executable, 'tools/chat.py', DEMO, bad['files']['empty'],
                           '--image', image, '--question', b'What is \xff here?'],
                          cwd=REPO, capture_output=True, timeout=300)
    err = proc.stderr.decode(errors='replace')
    assert proc.returncode == 2 and 'Traceback' not in err
    assert _last_line(err).startswith("error: --question: the question is not valid text: "
                                      "character 8 is '\\udcff'")
    path = bad['files']['truncated']
    rc, out, err = _run('tools/chat.py', DEMO, path, '--image', image, '--question', 'Where?')
    assert rc == 2 and 'Traceback' not in out + err
    assert _last_line(err).startswith(f'error: {path}: checkpoint is truncated')


def test_chat_in_process_refuses_a_malicious_checkpoint(bad, tmp_path, capsys):
    path = bad['files']['malicious_zip']
    with pytest.raises(SystemExit) as info:
        load_tool('chat').main([DEMO, path, '--image', _image(tmp_path), '--question', 'Where?'])
    _assert_one_line(info, capsys, path, 'refusing to unpickle')
    assert not bad['marker'].exists()
    with pytest.raises(SystemExit) as info:
        load_tool('chat').main([DEMO, bad['files']['empty'], '--cfg-options',
                                'model.pixel_decoder.type=NoSuchDecoder'])
    _assert_one_line(info, capsys, DEMO, "model.pixel_decoder.type: 'NoSuchDecoder'")


def test_converters_and_print_config_report_in_one_line(bad, tmp_path, capsys):
    from tools.misc import print_config
    from tools.model_converters import export_hf
    path = bad['files']['empty']
    with pytest.raises(SystemExit) as info:
        export_hf.main([DEMO, path, str(tmp_path / 'out')])
    _assert_one_line(info, capsys, path, REASONS['empty'])
    broken = tmp_path / 'broken.py'
    broken.write_text('model = dict(type=\n')
    with pytest.raises(SystemExit) as info:
        print_config.main([str(broken)])
    assert info.value.code == 2
    assert _last_line(capsys.readouterr().err).startswith(
        f'error: {broken}: invalid Python syntax')


def test_unexpected_errors_are_one_line_too_and_user_errors_can_be_registered(capsys):
    class AnnotationError(ValueError):
        pass

    @cli_main
    def fails(argv=None, error=None):
        raise error

    with pytest.raises(SystemExit) as info:
        fails([], ZeroDivisionError('division by zero\nin the loss'))
    assert info.value.code == 1
    assert capsys.readouterr().err.strip() == (
        'error: ZeroDivisionError: division by zero in the loss (an unexpected error; run again '
        'with --debug or PIXELLM_DEBUG=1 for the traceback)')
    with pytest.raises(ZeroDivisionError):
        fails(['--debug'], ZeroDivisionError('x'))
    register_user_error(AnnotationError)
    with pytest.raises(SystemExit) as info:
        fails([], AnnotationError('record 3: polygon outside the image'))
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == 'error: record 3: polygon outside the image'


def test_shipped_configs_pass_the_type_check():
    from pixellm.engine.preflight import check_config_types
    from pixellm.utils import load_config, register_all_modules
    register_all_modules(init_default_scope=True)
    configs = sorted(glob.glob(osp.join(REPO, 'configs', 'pixellm', '*.py'))
                     + glob.glob(osp.join(REPO, 'projects', '*', 'configs', '*.py')))
    assert len(configs) > 10
    for path in configs:
        check_config_types(load_config(path), path)


def test_a_bad_dataset_record_is_one_line_naming_file_record_and_field(tmp_path, capsys):
    """A MUSE record whose polygon lies outside its image stops browse_dataset.py with the
    dataset's own line (file, record, question, field), exit status 2, no traceback."""
    import shutil
    src = osp.join(REPO, 'tests', 'data', 'muse_tiny')
    root = tmp_path / 'muse'
    shutil.copytree(src, root)
    ann = root / 'muse_tiny.json'
    records = json.loads(ann.read_text())
    outside = [[100.0, 100.0, 110.0, 100.0, 110.0, 110.0, 100.0, 110.0]]
    records[0]['answers'][0][0]['segmentation'] = outside
    ann.write_text(json.dumps(records))
    browse = load_tool('misc/browse_dataset').main
    with pytest.raises(SystemExit) as info:
        browse([DEMO, '--output-dir', str(tmp_path / 'out'), '--cfg-options',
                f'train_dataloader.dataset.data_root={root}',
                'train_dataloader.dataset.ann_file=muse_tiny.json',
                'train_dataloader.dataset.data_prefix.img_path=images'])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert 'Traceback' not in out + err
    line = _last_line(err)
    assert line.startswith(f'error: {ann}, record 0 (id=7), question 0 '), err[-2000:]
    assert "field 'answers[0][0].segmentation'" in line and 'outside the image' in line
