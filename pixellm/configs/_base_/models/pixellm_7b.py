# PixelLM-7B as the official seed recipe builds it: LLaVA-Lightning-7B-v1-1 + CLIP ViT-L/14-336
# resized to 448, --seg_token_num=3 --image_feature_scale_num=2 --separate_mm_projector
# --vision_tower_for_mask --pad_train_clip_images, LoRA r8/alpha16 on q_proj,v_proj.
# Trained as the official train_ds.py trains: LoRA, the whole embed_tokens and lm_head, the mask
# decoder, text_hidden_fcs, mm_projector and out_mm_projector; the image-feature neck and the
# "no mask" embedding keep their initial values and the fusion weights are constants. The switches
# that train more (train_neck, learn_fusion_weights) and less (train_token_tables=False: only the
# added token rows) are listed in configs/pixellm/README.md.
# `pretrained` names are loaded when present (hub name or local path); the *_config dicts give the
# same shapes for building without weights (tests count parameters on the meta device).
llava_path = 'LLaVA-Lightning-7B-v1-1'   # local folder produced by LLaVA's delta merge
clip_path = 'openai/clip-vit-large-patch14-336'
image_size = 448                         # --resize_vision_tower_size
seg_token_num = 3
image_feature_scale_num = 2

clip_vit_l14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                        num_attention_heads=16, image_size=336, patch_size=14,
                        hidden_act='quick_gelu', layer_norm_eps=1e-5)
llama_7b = dict(model_type='llama', vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False)

# The text side, shared by the model and every pipeline step that tokenizes (load_config hands it
# out): LLaVA's tokenizer with the codebook tokens, then <im_start>/<im_end> (official order);
# llava_v1 conversations (train_ds.py --conv_type default).
text_processor = dict(
    type='TextProcessor',
    tokenizer=dict(type='PretrainedTokenizer', name_or_path=llava_path, model_max_length=512),
    codebook=dict(type='SegCodebook', num_scales=image_feature_scale_num,
                  tokens_per_scale=seg_token_num),
    chat_template='vicuna_v1',
    use_im_start_end=True)                 # official --use_mm_start_end defaults to True

model = dict(
    type='PixelLM',
    vision_encoder=dict(
        type='CLIPVisionEncoder', pretrained=clip_path, vision_config=clip_vit_l14_336,
        image_size=image_size, select_layers=(-2, -11)[:image_feature_scale_num],
        # The official --resize_vision_tower table; 'clip' keeps CLIP's CLS row first instead.
        pos_embed_layout='official', torch_dtype='bfloat16', frozen=True),
    llm=dict(
        type='HFCausalLM', pretrained=llava_path, llm_config=llama_7b, torch_dtype='bfloat16',
        attn_implementation='auto', gradient_checkpointing=True, train_token_tables=True,
        lora=dict(r=8, alpha=16, dropout=0.05, target_modules=['q_proj', 'v_proj'])),
    projector=dict(type='MLPProjector', hidden_ratio=2),       # mm_projector_hidden_dim = 2
    mask_projector=dict(type='MLPProjector', hidden_ratio=2),  # out_mm_projector
    separate_mm_projector=True,
    pixel_decoder=dict(type='PixelDecoder', embed_dim=256, depth=2, num_heads=8, mlp_dim=2048,
                       learn_fusion_weights=False, train_neck=False),
    loss_lm=dict(type='LMCrossEntropyLoss', loss_weight=1.0),
    loss_mask=dict(type='MaskBCELoss', loss_weight=2.0),
    loss_dice=dict(type='MaskDiceLoss', loss_weight=0.5),
    llm_image_grid=16,
    max_new_tokens=512,
    # --pad_train_clip_images: every official loader resizes the longest side to 448, pads, and
    # normalises with SAM's ImageNet mean/std (its preprocess()), not the CLIP statistics of
    # preprocessor_448.json, which only its unpadded path uses.
    data_preprocessor=dict(type='PixelLMDataPreprocessor',
                           mean=(123.675 / 255, 116.28 / 255, 103.53 / 255),
                           std=(58.395 / 255, 57.12 / 255, 57.375 / 255)),
)
