"""Run ``tools/train.py`` or ``tools/test.py`` in this process (one torchrun rank), then print how
many threads the process had before and after: ``run_tool_count_threads.py train|test ARGS...``.

A finished distributed run must have torn its process groups down, gloo's worker and transport
threads included; threads left to interpreter exit can abort a finished run (SIGABRT).
"""
import os
import os.path as osp
import sys

TOOLS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))),
                 'tools')
sys.path.insert(0, TOOLS)

import test as test_tool  # noqa: E402
import train as train_tool  # noqa: E402


def _threads():
    return len(os.listdir('/proc/self/task'))


if __name__ == '__main__':
    before = _threads()
    tool = {'train': train_tool, 'test': test_tool}[sys.argv[1]]
    tool.main(sys.argv[2:])
    print(f'rank {os.environ["RANK"]} threads: {before} before, {_threads()} after', flush=True)
