# LISA-7B on refCOCO, refCOCO+, refCOCOg: gIoU/cIoU, one item per expression.
# CKPT: a checkpoint of lisa_7b_lora_8xb2_ga10_5k_mix.py.
# Splits: refcoco and refcoco+ val (default), testA, testB; refcocog val, test:
#   python tools/test.py configs/lisa/lisa_7b_eval_refcoco.py CKPT
#   python tools/test.py configs/lisa/lisa_7b_eval_refcoco.py CKPT --cfg-options \
#       test_dataloader.dataset.dataset_name=refcoco+ \
#       test_dataloader.dataset.split=testA
from mmengine.config import read_base

with read_base():
    from .._base_.datasets.pixellm_eval import refer_evaluator, refer_test
    from .lisa_7b_lora_8xb2_ga10_5k_mix import *  # noqa: F401,F403

test_dataloader = dict(
    test_dataloader,  # noqa: F405
    dataset=dict(refer_test, pipeline=refer_test['pipeline'] + test_tail))  # noqa: F405
test_evaluator = refer_evaluator
