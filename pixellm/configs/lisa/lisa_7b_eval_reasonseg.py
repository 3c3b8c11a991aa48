# LISA-7B on ReasonSeg: gIoU/cIoU on the first question of each image.
# CKPT: a checkpoint of lisa_7b_lora_8xb2_ga10_5k_mix.py. Splits: val (default), test:
#   python tools/test.py configs/lisa/lisa_7b_eval_reasonseg.py CKPT
#   python tools/test.py configs/lisa/lisa_7b_eval_reasonseg.py CKPT --cfg-options \
#       test_dataloader.dataset.split=test
from mmengine.config import read_base

with read_base():
    from .._base_.datasets.pixellm_eval import reason_seg_test, refer_evaluator
    from .lisa_7b_lora_8xb2_ga10_5k_mix import *  # noqa: F401,F403

test_dataloader = dict(
    test_dataloader,  # noqa: F405
    dataset=dict(reason_seg_test, pipeline=reason_seg_test['pipeline'] + test_tail))  # noqa: F405
test_evaluator = refer_evaluator
