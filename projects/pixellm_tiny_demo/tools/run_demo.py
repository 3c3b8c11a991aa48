"""The offline demo behind ``make demo``: data, training, evaluation, overlays and baselines.

Each step runs the user-facing tool in a subprocess, exactly as a user would type it:
this project's ``generate_demo_data.py`` (skipped when the dataset is complete), ``tools/train.py``
three times (stage 1 pre-trains the tiny CLIP tower on the training images' semantic maps,
``pixellm_tiny_demo_encoder.py``; stage 2 trains PixelLM from that tower, ``pixellm_tiny_demo.py``
with ``model.vision_encoder.pretrained`` set; then LISA from the same tower,
``lisa_tiny_demo.py``, unless ``--skip-lisa``), ``tools/test.py`` for each (stage 1 as a semantic
segmenter, mIoU by mmseg's ``IoUMetric``; PixelLM with ``--show-dir``) and
``tools/analysis/trivial_baselines.py``. It ends with the models' gIoU/cIoU next to the trivial
predictors, the time each step took, a verdict per model and the stage-1 mIoU.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
PROJECT = 'projects/pixellm_tiny_demo'
CONFIG = f'{PROJECT}/configs/pixellm_tiny_demo.py'
ENCODER_CONFIG = f'{PROJECT}/configs/pixellm_tiny_demo_encoder.py'
LISA_CONFIG = f'{PROJECT}/configs/lisa_tiny_demo.py'


def run(step, cmd, timings):
    print(f'\n==> {step}: {" ".join(cmd)}', flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    timings[step] = time.time() - start


def read_checkpoint(work_dir):
    """The checkpoint named by ``<work_dir>/last_checkpoint`` (written by mmengine's
    CheckpointHook)."""
    with open(osp.join(REPO, work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def stage_one_line(metrics_file, work_dir):
    """The summary line of the stage-1 test: the mIoU ``tools/test.py`` wrote to
    ``metrics_file`` (mmseg's ``IoUMetric``, in percent) and the records folder of that test,
    whose log holds the per-class IoU table.

    Args:
        metrics_file (str): ``--out`` of the stage-1 ``tools/test.py``.
        work_dir (str): Its ``--work-dir``; each test writes ``<work_dir>/<timestamp>/``.

    Returns:
        str: One line.
    """
    with open(osp.join(REPO, metrics_file)) as f:
        metrics = json.load(f)
    if 'mIoU' not in metrics:
        sys.exit(f'the stage-1 test wrote no mIoU to {metrics_file} (it has {sorted(metrics)}); '
                 "the stage-1 config's test_evaluator should be IoUMetric")
    # tools/test.py writes test_metrics.json into each test's records folder; the newest is
    # the test just run.
    records = glob.glob(osp.join(REPO, work_dir, '*', 'test_metrics.json'))
    where = (f'; per-class IoU in the log under {osp.dirname(max(records, key=osp.getmtime))}'
             if records else '')
    return (f'stage 1 (vision tower as a linear segmenter, val images): mIoU '
            f'{metrics["mIoU"]:.2f}% (mmseg IoUMetric{where})')


def train_and_test(prefix, config, work_dir, encoder, timings, *test_options):
    """Steps ``<prefix>train`` (``config`` from the stage-1 tower ``encoder``) and
    ``<prefix>test`` (its last checkpoint, ``test_options`` added); return the checkpoint, the
    metrics file and the metrics."""
    py = sys.executable
    run(f'{prefix}train', [py, 'tools/train.py', config, '--work-dir', work_dir, '--cfg-options',
                           f'model.vision_encoder.pretrained={encoder}'], timings)
    checkpoint = read_checkpoint(work_dir)
    metrics_file = osp.join(work_dir, 'test_metrics.json')
    run(f'{prefix}test', [py, 'tools/test.py', config, checkpoint, '--work-dir', work_dir,
                          *test_options, '--out', metrics_file], timings)
    with open(osp.join(REPO, metrics_file)) as f:
        return checkpoint, metrics_file, json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default=CONFIG)
    parser.add_argument('--data', default='data/muse_demo')
    parser.add_argument('--work-dir', default='work_dirs/pixellm_tiny_demo')
    parser.add_argument('--encoder-config', default=ENCODER_CONFIG,
                        help='stage 1: the vision tower pre-training config')
    parser.add_argument('--encoder-work-dir', default='work_dirs/pixellm_tiny_demo_encoder')
    parser.add_argument('--lisa-config', default=LISA_CONFIG,
                        help='LISA-tiny, trained from the same stage-1 tower')
    parser.add_argument('--lisa-work-dir', default='work_dirs/lisa_tiny_demo')
    parser.add_argument('--skip-lisa', action='store_true',
                        help='train and test PixelLM-tiny only (about 6.5 minutes less)')
    args = parser.parse_args()
    py = sys.executable
    work_dir = args.work_dir
    timings = {}
    run('data', [py, f'{PROJECT}/tools/generate_demo_data.py', '--out', args.data], timings)
    run('encoder', [py, 'tools/train.py', args.encoder_config, '--work-dir',
                    args.encoder_work_dir], timings)
    # Stage 1 scored as what it is trained to be, a semantic segmenter of the val images.
    encoder_metrics = osp.join(args.encoder_work_dir, 'test_metrics.json')
    run('encoder test', [py, 'tools/test.py', args.encoder_config,
                         read_checkpoint(args.encoder_work_dir), '--work-dir',
                         args.encoder_work_dir, '--out', encoder_metrics], timings)
    stage_one = stage_one_line(encoder_metrics, args.encoder_work_dir)
    # Written by the stage-1 config's SaveVisionEncoderHook; absolute, as stage 2's saved config
    # keeps it.
    encoder = osp.join(REPO, args.encoder_work_dir, 'vision_encoder')
    if not osp.isfile(osp.join(encoder, 'config.json')):
        sys.exit(f'stage 1 wrote no vision tower at {encoder} (its config sets '
                 'SaveVisionEncoderHook.out_dir); stage 2 needs it')
    overlays = osp.join(work_dir, 'overlays')
    checkpoint, metrics_file, model = train_and_test('', args.config, work_dir, encoder, timings,
                                                     '--show-dir', overlays)
    lisa = None
    if not args.skip_lisa:
        lisa_checkpoint, _, lisa = train_and_test('lisa ', args.lisa_config, args.lisa_work_dir,
                                                  encoder, timings)
    baselines_file = osp.join(work_dir, 'trivial_baselines.json')
    run('baselines', [py, 'tools/analysis/trivial_baselines.py', args.config, '--out',
                      baselines_file], timings)
    with open(osp.join(REPO, baselines_file)) as f:
        baselines = json.load(f)
    best = max(baselines, key=lambda name: baselines[name]['gIoU'])
    models = [('PixelLM-tiny', model)] + ([('LISA-tiny', lisa)] if lisa is not None else [])
    rows = [(f'{name} (trained here)', res) for name, res in models]
    rows += [(f'trivial: {name}' + (' (best)' if name == best else ''), res)
             for name, res in baselines.items()]
    # The demo config scores twice: answer order, and the official MUSE protocol (prefixed).
    muse = 'muse_protocol/'
    columns = [('gIoU', 'gIoU'), ('cIoU', 'cIoU')]
    if muse + 'gIoU' in model:
        columns += [(muse + 'gIoU', 'MUSE gIoU'), (muse + 'cIoU', 'MUSE cIoU')]
    width = 40 + 11 * len(columns)
    print('\n' + '=' * width)
    print(f'{"MUSE-format demo val split":<40}' + ''.join(f'{t:>11}' for _, t in columns))
    for name, res in rows:
        print(f'{name:<40}' + ''.join(f'{res[k]:>11.4f}' for k, _ in columns))
    if len(columns) > 2:
        print('gIoU/cIoU: the k-th mask of the answer against the k-th target (answer order);')
        print('MUSE: IoU-optimal matching, extra masks count as wrong targets (official MUSE eval)')
    print('-' * width)
    for step, seconds in timings.items():
        print(f'{step + " time":<40}{seconds:>9.1f}s')
    print(f'{"total":<40}{sum(timings.values()):>9.1f}s')
    print(f'encoder:    {encoder} (stage 1)')
    print(f'checkpoint: {checkpoint}')
    if lisa is not None:
        print(f'LISA:       {lisa_checkpoint}')
    print(f'overlays:   {osp.join(REPO, overlays)}')
    print(f'metrics:    {osp.join(REPO, metrics_file)}')
    print('=' * width)
    for name, res in models:
        verdict = 'beats' if res['gIoU'] > baselines[best]['gIoU'] else 'does NOT beat'
        print(f'verdict: {name} {verdict} the best trivial predictor ({best}) on gIoU')
    print(stage_one)


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    main()
