# PixelLM-13B: the 7B definition with llava-llama-2-13b-chat-lightning-preview (LLaMA-2-13B shapes).
# The chat template stays llava_v1 ('vicuna_v1'): the official code trains and serves this model
# with it (see configs/pixellm/pixellm_13b_lora_8xb2_ga10_5k_mix.py).
from mmengine.config import read_base

with read_base():
    from .pixellm_7b import *  # noqa: F401,F403

llava_path = 'llava-llama-2-13b-chat-lightning-preview'
llama2_13b = dict(model_type='llama', vocab_size=32000, hidden_size=5120, intermediate_size=13824,
                  num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
model.update(  # noqa: F405
    llm=dict(type='HFCausalLM', pretrained=llava_path, llm_config=llama2_13b,
             torch_dtype='bfloat16', attn_implementation='auto', gradient_checkpointing=True,
             train_token_tables=True,
             lora=dict(r=8, alpha=16, dropout=0.05, target_modules=['q_proj', 'v_proj'])))
text_processor = dict(text_processor,  # noqa: F405
                      tokenizer=dict(text_processor['tokenizer'],  # noqa: F405
                                     name_or_path=llava_path))
