# LISA-13B on MUSE: gIoU/cIoU with IoU-optimal matching, as the official MUSE evaluation.
# CKPT: a checkpoint of lisa_13b_lora_8xb2_ga10_5k_mix.py.
# Splits: val (default), test_less, test_many:
#   python tools/test.py configs/lisa/lisa_13b_eval_muse.py CKPT
#   python tools/test.py configs/lisa/lisa_13b_eval_muse.py CKPT --cfg-options \
#       test_dataloader.dataset.ann_file=muse/muse_test_less.json
from mmengine.config import read_base

with read_base():
    from .._base_.datasets.pixellm_eval import muse_evaluator, muse_test
    from .lisa_13b_lora_8xb2_ga10_5k_mix import *  # noqa: F401,F403

test_dataloader = dict(
    test_dataloader,  # noqa: F405
    dataset=dict(muse_test, pipeline=muse_test['pipeline'] + test_tail))  # noqa: F405
test_evaluator = muse_evaluator
