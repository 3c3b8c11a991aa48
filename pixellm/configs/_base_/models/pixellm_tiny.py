# A CPU-sized PixelLM: the same classes as PixelLM-7B with tiny random-init shapes, for tests and
# the offline demo. No download: CLIP and LLaMA are built from configs, the tokenizer is shipped.
image_size = 112          # encoder input side (PixelLM-7B: 448)
seg_token_num = 3         # codebook tokens per scale (official --seg_token_num)
image_feature_scale_num = 2

# The text side, shared by the model and every pipeline step that tokenizes (load_config hands it
# out): the shipped tokenizer, the codebook (a target is written as its 2 x 3 tokens), the chat
# template and how the image is written.
text_processor = dict(
    type='TextProcessor',
    tokenizer=dict(type='TinyTokenizer', model_max_length=512),
    codebook=dict(type='SegCodebook', num_scales=image_feature_scale_num,
                  tokens_per_scale=seg_token_num),
    chat_template='vicuna_v1',
    use_im_start_end=False)

model = dict(
    type='PixelLM',
    vision_encoder=dict(
        type='CLIPVisionEncoder',
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, image_size=image_size, patch_size=14),
        # Layers -2 and -4 play the roles of ViT-L's -2 and -11.
        select_layers=(-2, -4)[:image_feature_scale_num],
        frozen=True),
    llm=dict(
        type='HFCausalLM',
        llm_config=dict(model_type='llama', vocab_size=1024, hidden_size=128,
                        intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=512,
                        tie_word_embeddings=False),
        lora=dict(r=8, alpha=16, dropout=0.05, target_modules=['q_proj', 'v_proj'])),
    projector=dict(type='MLPProjector', hidden_ratio=2),
    mask_projector=dict(type='MLPProjector', hidden_ratio=2),
    separate_mm_projector=True,
    pixel_decoder=dict(type='PixelDecoder', embed_dim=64, depth=2, num_heads=4, mlp_dim=256),
    loss_lm=dict(type='LMCrossEntropyLoss', loss_weight=1.0),
    loss_mask=dict(type='MaskBCELoss', loss_weight=2.0),
    loss_dice=dict(type='MaskDiceLoss', loss_weight=0.5),
    llm_image_grid=4,
    # Room for the longest answer of the generated MUSE data (three targets, 57 tokens).
    max_new_tokens=96,
)
