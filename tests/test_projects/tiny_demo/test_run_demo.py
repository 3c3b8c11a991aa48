"""projects/pixellm_tiny_demo/tools/run_demo.py: the steps it runs, in order, and its summary,
with each tool replaced by a stand-in that writes the files the tool writes."""
import importlib.util
import json
import os
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
RUN_DEMO = osp.join(REPO, 'projects/pixellm_tiny_demo/tools/run_demo.py')


def load_run_demo():
    spec = importlib.util.spec_from_file_location('pixellm_run_demo', RUN_DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_json(path, value):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(value, f)


def fake_tools(tmp_path, encoder_metrics):
    """A ``run`` that records each step and writes what its tool would: checkpoints named in
    ``last_checkpoint``, the tower folder, and the ``--out`` files of the tests and baselines."""
    calls = []

    def run(step, cmd, timings):
        calls.append((step, cmd))
        out = cmd[cmd.index('--out') + 1] if '--out' in cmd else None
        work = cmd[cmd.index('--work-dir') + 1] if '--work-dir' in cmd else None
        if step in ('encoder', 'train', 'lisa train'):
            with open(osp.join(work, 'last_checkpoint'), 'w') as f:
                f.write(osp.join(work, 'iter_9.pth'))
            if step == 'encoder':
                write_json(osp.join(work, 'vision_encoder', 'config.json'), {})
        elif step == 'encoder test':
            write_json(out, encoder_metrics)
            # tools/test.py's records folder of this test.
            write_json(osp.join(work, '20260102_030405', 'test_metrics.json'), encoder_metrics)
        elif step == 'test':
            write_json(out, {'gIoU': 0.61, 'cIoU': 0.52})
        elif step == 'lisa test':
            write_json(out, {'gIoU': 0.25, 'cIoU': 0.31})
        elif step == 'baselines':
            write_json(out, {'empty': {'gIoU': 0.0, 'cIoU': 0.0},
                             'union': {'gIoU': 0.3, 'cIoU': 0.28}})
        timings[step] = 2.0
    return run, calls


def run_main(monkeypatch, tmp_path, encoder_metrics, *extra):
    module = load_run_demo()
    run, calls = fake_tools(tmp_path, encoder_metrics)
    monkeypatch.setattr(module, 'run', run)
    enc, work, lisa = str(tmp_path / 'enc'), str(tmp_path / 'work'), str(tmp_path / 'lisa')
    for folder in (enc, work, lisa):
        os.makedirs(folder)
    monkeypatch.setattr(sys, 'argv', ['run_demo.py', '--data', str(tmp_path / 'data'),
                                      '--work-dir', work, '--encoder-work-dir', enc,
                                      '--lisa-work-dir', lisa, *extra])
    module.main()
    return module, calls, enc


def test_stage_one_is_tested_and_its_miou_printed_after_the_table(monkeypatch, tmp_path,
                                                                   capsys):
    metrics = {'aAcc': 95.12, 'mIoU': 71.234, 'mAcc': 80.5}
    module, calls, enc = run_main(monkeypatch, tmp_path, metrics)
    assert [step for step, _ in calls] == ['data', 'encoder', 'encoder test', 'train', 'test',
                                           'lisa train', 'lisa test', 'baselines']
    assert calls[2][1] == [sys.executable, 'tools/test.py', module.ENCODER_CONFIG,
                           osp.join(enc, 'iter_9.pth'), '--work-dir', enc, '--out',
                           osp.join(enc, 'test_metrics.json')]
    # LISA-tiny trains from the stage-1 tower, as PixelLM-tiny does.
    tower = f'model.vision_encoder.pretrained={osp.join(module.REPO, enc, "vision_encoder")}'
    assert calls[5][1][2] == module.LISA_CONFIG and calls[5][1][-1] == tower
    assert calls[3][1][-1] == tower
    lines = capsys.readouterr().out.splitlines()
    table = lines.index(next(line for line in lines if line.startswith('MUSE-format demo')))
    # The table as before: gIoU first, the model's row, then one per baseline.
    assert lines[table].split()[4:] == ['gIoU', 'cIoU']
    assert lines[table + 1].startswith('PixelLM-tiny (trained here)')
    assert lines[table + 1].split()[-2:] == ['0.6100', '0.5200']
    assert lines[table + 2].startswith('LISA-tiny (trained here)')
    assert lines[table + 2].split()[-2:] == ['0.2500', '0.3100']
    assert [line.split()[:2] for line in lines[table + 3:table + 5]] == [
        ['trivial:', 'empty'], ['trivial:', 'union']]
    # After a rule, a timing line per step, the stage-1 test among them, and the total.
    assert set(lines[table + 5]) == {'-'}
    timing = [line.rsplit(None, 1) for line in lines[table + 6:table + 15]]
    assert timing == [['data time', '2.0s'], ['encoder time', '2.0s'],
                      ['encoder test time', '2.0s'], ['train time', '2.0s'],
                      ['test time', '2.0s'], ['lisa train time', '2.0s'],
                      ['lisa test time', '2.0s'], ['baselines time', '2.0s'],
                      ['total', '16.0s']]
    # A verdict per model against the best trivial predictor, then the stage-1 line last.
    assert lines[-3:-1] == [
        'verdict: PixelLM-tiny beats the best trivial predictor (union) on gIoU',
        'verdict: LISA-tiny does NOT beat the best trivial predictor (union) on gIoU']
    assert lines[-1] == ('stage 1 (vision tower as a linear segmenter, val images): mIoU 71.23% '
                         '(mmseg IoUMetric; per-class IoU in the log under '
                         f'{osp.join(enc, "20260102_030405")})')


def test_a_stage_one_test_without_miou_stops_the_demo(monkeypatch, tmp_path):
    with pytest.raises(SystemExit, match="wrote no mIoU .*'gIoU'.*test_evaluator should be "
                       'IoUMetric'):
        run_main(monkeypatch, tmp_path, {'gIoU': 0.5})


def test_skip_lisa_runs_pixellm_only(monkeypatch, tmp_path, capsys):
    _, calls, _ = run_main(monkeypatch, tmp_path, {'mIoU': 50.0}, '--skip-lisa')
    assert [step for step, _ in calls] == ['data', 'encoder', 'encoder test', 'train', 'test',
                                           'baselines']
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if 'LISA' in line]
    assert lines[-2].startswith('verdict: PixelLM-tiny beats')
