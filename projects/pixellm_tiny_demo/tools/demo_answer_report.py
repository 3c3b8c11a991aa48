"""Which objects a checkpoint's answers name, by question kind, on the synthetic MUSE data.

The demo's gIoU hangs on naming: a mask follows the object its answer names, so an answer that
names a wrong object scores 0 for that target however good the mask. This tool generates every
answer of a config's test split (as ``tools/test.py`` does) and compares the objects each answer
names ("the red circle") with the reference answer's, by the question kinds of the generator
(:func:`question_kind` of this project's generator): the share named exactly (the same objects, in any
order), and the misses that name a strict subset or superset of the targets. It also counts the
colours named, which shows when a model names a favourite colour instead of reading it off the
image.

Usage: python projects/pixellm_tiny_demo/tools/demo_answer_report.py CONFIG CHECKPOINT
       [--ann-file muse_train.json] [--out report.json] [--cfg-options ...]
"""
import argparse
import collections
import json
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from projects.pixellm_tiny_demo.pixellm_tiny_demo import (QUESTION_KINDS, named_objects,  # noqa: E402
                                                         question_kind)
from pixellm.engine.checkpoint import atomic_write_text  # noqa: E402


def answer_report(rows):
    """Summarise ``rows`` of ``dict(question, reference, prediction)`` (answer texts) by kind.

    Returns:
        dict: for each kind present and ``'all'``: ``questions``, ``exact`` (the prediction names
        the reference's objects, as a multiset; a relation's anchor, named in the question, is
        left out), ``subset`` / ``superset`` (a strict sub- or superset of them),
        ``exact_rate``, and ``colours_named`` / ``colours_reference`` (how often each colour is
        named).
    """
    kinds = [question_kind(r['question']) for r in rows]
    out = {}
    for kind in QUESTION_KINDS + ('all', ):
        picked = [(r, k) for r, k in zip(rows, kinds) if kind in ('all', k)]
        if not picked:
            continue
        exact = subset = superset = 0
        named, reference = collections.Counter(), collections.Counter()
        for r, row_kind in picked:
            ref = collections.Counter(named_objects(r['reference']))
            pred = collections.Counter(named_objects(r['prediction']))
            if row_kind == 'relation':
                # The anchor ("... to the left of the green star") is not a target.
                anchor = collections.Counter(named_objects(r['question']))
                ref, pred = ref - anchor, pred - anchor
            exact += pred == ref
            subset += pred != ref and not pred - ref
            superset += pred != ref and not ref - pred
            named.update(colour for colour, _ in pred.elements())
            reference.update(colour for colour, _ in ref.elements())
        out[kind] = dict(questions=len(picked), exact=exact, subset=subset, superset=superset,
                         exact_rate=exact / len(picked), colours_named=dict(named.most_common()),
                         colours_reference=dict(reference.most_common()))
    return out


def parse_args(argv=None):
    from pixellm.engine.tool_config import add_common_arguments
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--ann-file', help="another annotation file of the test dataset's "
                        "data_root (e.g. muse_train.json: are the training questions learned?)")
    parser.add_argument('--out', help='write the summary and every answer as json here')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None):
    import torch

    from pixellm.engine.runner_build import build_runner
    from pixellm.engine.tool_config import load_tool_config
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'demo_answer_report.py: checkpoint {args.checkpoint!r} does not exist')
    cfg = load_tool_config(args)
    if args.ann_file:
        cfg.test_dataloader.dataset.ann_file = args.ann_file
    cfg.load_from = args.checkpoint
    cfg.resume = False
    cfg.test_evaluator = []
    runner = build_runner(cfg)
    runner.load_or_resume()
    model = runner.model.eval()
    rows = []
    with torch.no_grad():
        for data in runner.build_dataloader(runner._test_dataloader):
            for sample in model.test_step(data):
                meta = sample.metainfo
                rows.append(dict(image=osp.basename(meta['img_path']), question=meta['question'],
                                 reference=meta['answer'], prediction=meta['pred_text']))
    report = answer_report(rows)
    print(f'{"kind":<12}{"questions":>10}{"exact":>8}{"subset":>8}{"superset":>10}  colours named')
    for kind, res in report.items():
        print(f'{kind:<12}{res["questions"]:>10}{res["exact_rate"]:>8.1%}{res["subset"]:>8}'
              f'{res["superset"]:>10}  {res["colours_named"]}')
    if args.out:
        atomic_write_text(json.dumps(dict(summary=report, answers=rows), indent=2), args.out)


if __name__ == '__main__':
    main()
