"""tools/chat.py: one-shot answers with their files, the interactive session, user mistakes."""
import json
import os.path as osp
import re
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def chat(trained, *args, stdin=None):
    proc = subprocess.run([sys.executable, 'tools/chat.py', trained['config'],
                           trained['checkpoint'], *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, input=stdin)
    return proc.returncode, proc.stdout, proc.stderr


def question_with_targets(trained):
    """A val image and question the trained model answers with at least one target."""
    from pixellm.apis import inference, init_model
    model = init_model(trained['config'], trained['checkpoint'])
    root = trained['data_root']
    for record in json.load(open(osp.join(root, 'muse_val.json'))):
        path = osp.join(root, 'images', record['file_name'])
        for question in record['questions']:
            if inference(model, path, question).num_targets:
                return path, question
    raise AssertionError('the trained tiny model wrote no target for any val question')


def test_one_shot_writes_the_overlay_and_one_mask_per_target(trained_tiny, tmp_path):
    image, question = question_with_targets(trained_tiny)
    out = tmp_path / 'out'
    rc, stdout, stderr = chat(trained_tiny, '--image', image, '--question', question,
                              '--out-dir', str(out), '--save-rle')
    assert rc == 0, stderr[-2000:]
    answer = re.search(r'^PixelLM: (.*)$', stdout, re.M).group(1)
    markers = re.findall(r'\[(\d+)\]', answer)
    assert markers and markers == [str(k) for k in range(1, len(markers) + 1)]
    stem = osp.splitext(osp.basename(image))[0]
    masks = sorted(out.glob(f'{stem}_mask*.png'))
    assert len(masks) == len(markers)
    width, height = Image.open(image).size
    for path in masks:
        mask = np.asarray(Image.open(path))
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
    overlay = Image.open(out / f'{stem}_overlay.png')
    assert overlay.width == width and overlay.height > height
    dump = json.load(open(out / f'{stem}_masks.json'))
    assert dump['answer'] == answer and len(dump['targets']) == len(markers)
    # One printed line per target, numbered as in the text.
    assert len(re.findall(r'^  \[\d+\] ', stdout, re.M)) == len(markers)


def test_interactive_session_survives_mistakes_and_keeps_history(trained_tiny, tmp_path):
    image, question = question_with_targets(trained_tiny)
    not_image = tmp_path / 'notes.png'
    not_image.write_text('not an image')
    lines = [str(tmp_path / 'missing.png'), str(not_image), image, '   ', question,
             'And the other one?', ':reset', question, ':quit']
    rc, stdout, stderr = chat(trained_tiny, '--out-dir', str(tmp_path / 'out'),
                              stdin='\n'.join(lines) + '\n')
    assert rc == 0, stderr[-2000:]
    assert 'Traceback' not in stdout + stderr
    assert 'does not exist' in stdout and 'is not an image' in stdout
    assert 'the question is empty' in stdout
    assert stdout.count('PixelLM: ') == 3 and '(history cleared)' in stdout
    stem = osp.splitext(osp.basename(image))[0]
    assert sorted(p.name for p in (tmp_path / 'out').glob('*_overlay.png')) == [
        f'{stem}_turn{k}_overlay.png' for k in (1, 2, 3)]
    # Turn 2 was asked with turn 1 as history; after :reset the first question is asked afresh.
    from pixellm.apis import inference, init_model
    model = init_model(trained_tiny['config'], trained_tiny['checkpoint'])
    first = inference(model, image, question)
    second = inference(model, image, 'And the other one?', history=[(question, first.raw_text)])
    answers = re.findall(r'PixelLM: (.*)$', stdout, re.M)
    assert answers == [first.text, second.text, first.text]


def test_one_shot_mistakes_exit_non_zero_without_traceback(trained_tiny, tmp_path):
    rc, stdout, stderr = chat(trained_tiny, '--image', str(tmp_path / 'missing.png'),
                              '--question', 'What is it?')
    assert rc == 2 and 'does not exist' in stderr and 'Traceback' not in stderr
    image = osp.join(trained_tiny['data_root'], 'images', 'val_000000.png')
    rc, stdout, stderr = chat(trained_tiny, '--image', image, '--question', ' ')
    assert rc == 2 and 'the question is empty' in stderr and 'Traceback' not in stderr
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'\x89PNG broken')
    rc, stdout, stderr = chat(trained_tiny, '--image', str(bad), '--question', 'What is it?')
    assert rc == 2 and 'is not an image' in stderr and 'Traceback' not in stderr


def test_checkpoint_that_does_not_fit_the_config_exits_listing_keys(trained_tiny):
    image = osp.join(trained_tiny['data_root'], 'images', 'val_000000.png')
    rc, stdout, stderr = chat(trained_tiny, '--image', image, '--question', 'What is it?',
                              '--cfg-options', 'model.aux_heads=[]')
    assert rc == 1 and 'Traceback' not in stderr
    assert 'does not match the model' in stderr and 'aux_heads.0.head.weight' in stderr
    rc, stdout, stderr = chat(trained_tiny, '--image', image, '--question', 'What is it?',
                              '--load-in-8bit')
    assert rc == 1 and 'export_hf.py' in stderr and 'Traceback' not in stderr
