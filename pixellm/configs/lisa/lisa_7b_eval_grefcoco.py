# LISA-7B on gRefCOCO: gIoU/cIoU, one union mask per expression.
# CKPT: a checkpoint of lisa_7b_lora_8xb2_ga10_5k_mix.py. Splits: val (default), testA, testB:
#   python tools/test.py configs/lisa/lisa_7b_eval_grefcoco.py CKPT
#   python tools/test.py configs/lisa/lisa_7b_eval_grefcoco.py CKPT --cfg-options \
#       test_dataloader.dataset.split=testA
from mmengine.config import read_base

with read_base():
    from .._base_.datasets.pixellm_eval import grefcoco_test, refer_evaluator
    from .lisa_7b_lora_8xb2_ga10_5k_mix import *  # noqa: F401,F403

test_dataloader = dict(
    test_dataloader,  # noqa: F405
    dataset=dict(grefcoco_test, pipeline=grefcoco_test['pipeline'] + test_tail))  # noqa: F405
test_evaluator = refer_evaluator
