# LISA-13B-llama2-v1, the official recipe (LISA's train_ds.py defaults, whose --version is
# llava-llama-2-13b-chat-lightning-preview): the LISA-7B-v1 recipe (same data, schedule and flags;
# lisa_7b_lora_8xb2_ga10_5k_mix.py) with the 13B LLM. Every official flag and the key it maps to:
# configs/lisa/README.md. Train with
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/lisa/lisa_13b_lora_8xb2_ga10_5k_mix.py --launcher pytorch
from mmengine.config import read_base

with read_base():
    from .lisa_7b_lora_8xb2_ga10_5k_mix import *  # noqa: F401,F403
    from .._base_.models.lisa_13b import llama_13b, llava_path  # noqa: F401

# The LLM and its tokenizer change; the text processor is shared by the model and every
# pipeline, so changing its tokenizer here changes them all.
model['llm'].update(pretrained=llava_path, llm_config=llama_13b)  # noqa: F405
text_processor = dict(text_processor,  # noqa: F405
                      tokenizer=dict(text_processor['tokenizer'],  # noqa: F405
                                     name_or_path=llava_path))
