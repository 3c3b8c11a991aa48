"""projects/pixellm_tiny_demo/tools/demo_answer_report.py: naming by question kind, against hand counts and a run."""
import json
import os.path as osp
import subprocess
import sys

import pytest

from projects.pixellm_tiny_demo.pixellm_tiny_demo import named_objects, question_kind
from projects.pixellm_tiny_demo.tools.demo_answer_report import answer_report

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
TOOL = 'projects/pixellm_tiny_demo/tools/demo_answer_report.py'


def test_answer_report_counts_by_kind():
    rows = [
        # Exact, in another wording.
        dict(question='Segment the red circle.', reference='The red circle {seg}.',
             prediction='Sure, the red circle [SEG0].'),
        # A strict subset: one of the two stars.
        dict(question='Where are all the stars?',
             reference='There are two stars: the blue star {seg} and the red star {seg}.',
             prediction='There is one star: the blue star [SEG0].'),
        # The right shape in a wrong colour: neither subset nor superset.
        dict(question='Segment every star.', reference='There is one star: the yellow star {seg}.',
             prediction='There is one star: the green star [SEG0].'),
        # A strict superset; the anchor (the green circle) is not a target.
        dict(question='Which objects are above the green circle?',
             reference='The red star {seg} is above the green circle.',
             prediction='The red star [SEG0] and the blue square [SEG0] are above the green '
                        'circle.'),
    ]
    report = answer_report(rows)
    assert set(report) == {'referring', 'every_shape', 'relation', 'all'}
    assert report['referring'] == dict(
        questions=1, exact=1, subset=0, superset=0, exact_rate=1.0,
        colours_named={'red': 1}, colours_reference={'red': 1})
    assert report['every_shape']['questions'] == 2
    assert (report['every_shape']['exact'], report['every_shape']['subset'],
            report['every_shape']['superset']) == (0, 1, 0)
    assert report['every_shape']['colours_named'] == {'blue': 1, 'green': 1}
    assert report['every_shape']['colours_reference'] == {'blue': 1, 'red': 1, 'yellow': 1}
    assert (report['relation']['exact'], report['relation']['superset']) == (0, 1)
    assert report['relation']['colours_named'] == {'red': 1, 'blue': 1}
    assert report['all']['questions'] == 4
    assert report['all']['exact_rate'] == 0.25
    assert (report['all']['subset'], report['all']['superset']) == (1, 1)


def test_answer_report_names_a_foreign_question():
    with pytest.raises(ValueError, match='What colour is the sky'):
        answer_report([dict(question='What colour is the sky?', reference='Blue.',
                            prediction='Blue.')])


def test_report_of_a_trained_checkpoint_covers_every_val_question(trained_tiny, tmp_path):
    out = tmp_path / 'report.json'
    proc = subprocess.run(
        [sys.executable, TOOL, trained_tiny['config'], trained_tiny['checkpoint'], '--work-dir', str(tmp_path / 'work'), '--out', str(out),
         '--cfg-options', *trained_tiny['cfg_options']],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'exact' in proc.stdout and '\nall ' in proc.stdout
    result = json.loads(out.read_text())
    records = json.load(open(osp.join(trained_tiny['data_root'], 'muse_val.json')))
    asked = sorted((r['file_name'], q) for r in records for q in r['questions'])
    answers = result['answers']
    assert sorted((a['image'], a['question']) for a in answers) == asked
    # Each reference is the dataset's answer to that question, with its targets in order.
    for a in answers:
        record = next(r for r in records if r['file_name'] == a['image'])
        targets = record['answers'][record['questions'].index(a['question'])]
        names = [tuple(t['rephrased_name'].split()) for t in targets]
        assert named_objects(a['reference'])[:len(names)] == names
    summary = result['summary']
    assert summary['all']['questions'] == len(asked)
    for kind in {question_kind(q) for _, q in asked}:
        assert summary[kind]['questions'] == sum(question_kind(q) == kind for _, q in asked)
    assert sum(summary[k]['exact'] for k in summary if k != 'all') == summary['all']['exact']


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, TOOL, 'projects/pixellm_tiny_demo/configs/pixellm_tiny_demo.py', str(tmp_path / 'none.pth')],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'none.pth' in proc.stderr and 'does not exist' in proc.stderr
    assert 'Traceback' not in proc.stderr
