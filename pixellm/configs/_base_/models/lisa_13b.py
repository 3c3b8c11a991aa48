# LISA-13B-llama2-v1 as the official train_ds.py builds it (its --version default): the LISA-7B
# definition (CLIP ViT-L/14 at 224, SAM ViT-H, one [SEG] token, LoRA r8/alpha16 on q_proj,v_proj)
# with llava-llama-2-13b-chat-lightning-preview (LLaMA-2-13B shapes) as the LLM.
from mmengine.config import read_base

with read_base():
    from .lisa_7b import *  # noqa: F401,F403

llava_path = 'liuhaotian/llava-llama-2-13b-chat-lightning-preview'  # train_ds.py --version
llama_13b = dict(model_type='llama', vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                 num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                 max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
model['llm'].update(pretrained=llava_path, llm_config=llama_13b)  # noqa: F405
text_processor = dict(text_processor,  # noqa: F405
                      tokenizer=dict(text_processor['tokenizer'],  # noqa: F405
                                     name_or_path=llava_path))
