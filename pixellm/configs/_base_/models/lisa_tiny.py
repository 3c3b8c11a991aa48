# A CPU-sized LISA: the classes of LISA-7B (CLIP tower for the LLM, SAM image encoder and SAM mask
# decoder for the masks, one [SEG] token) with tiny random-init shapes, for tests and the offline
# demo. No download: every part is built from its config, the tokenizer is shipped.
image_size = 128          # mask-encoder (SAM) input side; LISA-7B: 1024
clip_image_size = 56      # vision-encoder (CLIP) input side; LISA-7B: 224

# One target is written as the single token [SEG]; LISA writes the image as
# <im_start><image><im_end> (use_mm_start_end) in the LLaVA v1 (vicuna) template.
text_processor = dict(
    type='TextProcessor',
    tokenizer=dict(type='TinyTokenizer', model_max_length=512),
    codebook=dict(type='SegCodebook', num_scales=1, tokens_per_scale=1, token_format='[SEG]'),
    chat_template='vicuna_v1',
    use_im_start_end=True)

model = dict(
    type='LISA',
    vision_encoder=dict(
        type='CLIPVisionEncoder',
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, image_size=clip_image_size, patch_size=14),
        select_layers=(-2, ),
        frozen=True),
    # SAM ViT-H's layout at toy width: windowed blocks with a global one every second block, a
    # neck to `output_channels`, the width of the mask decoder and its prompts. transformers
    # initialises a random SAM encoder with std 1e-10 (initializer_range; real SAM weights
    # replace it), which makes its features ~1e-21: the tiny one draws them at 0.02.
    mask_encoder=dict(
        type='SAMImageEncoder',
        vision_config=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                           global_attn_indexes=(1, 3), window_size=4, image_size=image_size,
                           patch_size=16, output_channels=64, num_pos_feats=32, mlp_dim=128,
                           initializer_range=0.02),
        frozen=True),
    llm=dict(
        type='HFCausalLM',
        llm_config=dict(model_type='llama', vocab_size=1024, hidden_size=128,
                        intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=512,
                        tie_word_embeddings=False),
        lora=dict(r=8, alpha=16, dropout=0.05, target_modules=['q_proj', 'v_proj'])),
    # LLaVA-v1's mm_projector: one Linear (frozen by LISA, train_projector=False).
    projector=dict(type='MLPProjector', num_layers=1),
    pixel_decoder=dict(
        type='LISAMaskDecoder',
        mask_decoder_config=dict(mlp_dim=128, num_attention_heads=4, iou_head_hidden_dim=64)),
    loss_lm=dict(type='LMCrossEntropyLoss', loss_weight=1.0),
    loss_mask=dict(type='MaskBCELoss', loss_weight=2.0),
    loss_dice=dict(type='MaskDiceLoss', loss_weight=0.5),
    max_new_tokens=96,
)
