# PixelLM-13B: the PixelLM-7B seed recipe (pixellm_7b_lora_8xb2_ga10_5k_mix.py: same data,
# schedule and flags) started from llava-llama-2-13b-chat-lightning-preview; 8 GPUs x batch 2 x 10
# accumulation steps assumed. Every official flag and the key it maps to: configs/pixellm/README.md.
# Data layout: docs/datasets.md. Train with
#   torchrun --nproc_per_node 8 tools/train.py \
#       configs/pixellm/pixellm_13b_lora_8xb2_ga10_5k_mix.py --launcher pytorch
# The chat template stays llava_v1 ('vicuna_v1'), as the official README trains and serves the 13B
# model: its collate_fn masks labels by the llava_v1 separators only and fails an assertion on
# llava_llama_2 conversations.
from mmengine.config import read_base

with read_base():
    from .pixellm_7b_lora_8xb2_ga10_5k_mix import *  # noqa: F401,F403
    from .._base_.models.pixellm_13b import llama2_13b, llava_path  # noqa: F401

# The LLM and its tokenizer change; the text processor is shared by the model and every
# pipeline, so changing its tokenizer here changes them all.
model['llm'].update(pretrained=llava_path, llm_config=llama2_13b)  # noqa: F405
text_processor = dict(text_processor,  # noqa: F405
                      tokenizer=dict(text_processor['tokenizer'],  # noqa: F405
                                     name_or_path=llava_path))
