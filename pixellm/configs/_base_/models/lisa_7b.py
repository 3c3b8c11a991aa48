# LISA-7B-v1 as the official train_ds.py builds it: LLaVA-Lightning-7B-v1-1 (LLaVA v1 with a
# single Linear mm_projector) reading CLIP ViT-L/14 at 224 (--vision-tower default, select layer
# -2, 256 image tokens), SAM ViT-H (--vision_pretrained) on the 1024 image for the masks, one
# [SEG] token, LoRA r8/alpha16 on q_proj,v_proj.
# Trained as the official train_ds.py trains: LoRA, the whole embed_tokens and lm_head, the mask
# decoder and text_hidden_fcs; CLIP, mm_projector, SAM's image and prompt encoders stay frozen.
# `pretrained` names are loaded when present (hub name or local path); the *_config dicts give the
# same shapes for building without weights (tests build it on the meta device).
llava_path = 'LLaVA-Lightning-7B-v1-1'   # local folder produced by LLaVA's delta merge
clip_path = 'openai/clip-vit-large-patch14'
sam_path = 'facebook/sam-vit-huge'       # SAM ViT-H as a transformers SamModel folder
image_size = 1024                        # --image_size (SAM's input)

clip_vit_l14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=224, patch_size=14,
                    hidden_act='quick_gelu', layer_norm_eps=1e-5)
sam_vit_h = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                 global_attn_indexes=(7, 15, 23, 31), window_size=14, image_size=image_size,
                 patch_size=16, output_channels=256, num_pos_feats=128)
llama_7b = dict(model_type='llama', vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)

# The text side, shared by the model and every pipeline step that tokenizes: LLaVA's tokenizer
# with [SEG], then <im_start>/<im_end> (official order); llava_v1 conversations (--conv_type).
text_processor = dict(
    type='TextProcessor',
    tokenizer=dict(type='PretrainedTokenizer', name_or_path=llava_path, model_max_length=512),
    codebook=dict(type='SegCodebook', num_scales=1, tokens_per_scale=1, token_format='[SEG]'),
    chat_template='vicuna_v1',
    use_im_start_end=True)                 # --use_mm_start_end defaults to True

model = dict(
    type='LISA',
    vision_encoder=dict(
        type='CLIPVisionEncoder', pretrained=clip_path, vision_config=clip_vit_l14,
        select_layers=(-2, ), torch_dtype='bfloat16', frozen=True),
    mask_encoder=dict(
        type='SAMImageEncoder', pretrained=sam_path, vision_config=sam_vit_h,
        torch_dtype='bfloat16', frozen=True),
    llm=dict(
        type='HFCausalLM', pretrained=llava_path, llm_config=llama_7b, torch_dtype='bfloat16',
        attn_implementation='auto', gradient_checkpointing=True, train_token_tables=True,
        lora=dict(r=8, alpha=16, dropout=0.05, target_modules=['q_proj', 'v_proj'])),
    projector=dict(type='MLPProjector', num_layers=1),   # LLaVA v1's Linear mm_projector
    pixel_decoder=dict(type='LISAMaskDecoder', pretrained=sam_path),  # out_dim 256 from SAM
    loss_lm=dict(type='LMCrossEntropyLoss', loss_weight=1.0),     # --ce_loss_weight
    loss_mask=dict(type='MaskBCELoss', loss_weight=2.0),          # --bce_loss_weight
    loss_dice=dict(type='MaskDiceLoss', loss_weight=0.5),         # --dice_loss_weight
    max_new_tokens=512,
)
