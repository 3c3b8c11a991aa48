"""Map a released LISA checkpoint (``xinlai/LISA-7B-v1`` ...) onto the toolbox's LISA components.

The official ``LISAForCausalLM`` is LLaVA's ``LlavaLlamaForCausalLM`` (a ``LlamaForCausalLM``
whose ``model`` also holds the CLIP tower and ``mm_projector``, a single ``nn.Linear``) with two
additions under ``model``: ``visual_model``, a segment_anything ``Sam`` (ViT-H image encoder,
prompt encoder, mask decoder), and ``text_hidden_fcs``. Its merge script
(``merge_lora_weights_and_save_hf_model.py``) merges LoRA into the LLaMA weights and saves every
weight whose name does not contain ``vision_tower``: the released folders hold LLaMA, the
projector, SAM and ``text_hidden_fcs``, and no CLIP, which comes from its own checkpoint
(``openai/clip-vit-large-patch14``, used at its native 224).

The toolbox keys are ``llm.model...`` (the transformers ``LlamaForCausalLM``), ``projector...``
(``MLPProjector`` with one layer), ``vision_encoder...`` (``CLIPVisionEncoder``),
``mask_encoder...`` (``SAMImageEncoder``) and ``pixel_decoder...`` (``LISAMaskDecoder``). SAM's
modules are transformers' there, whose names differ from segment_anything's
(:data:`SAM_KEY_MAP`); no tensor changes shape or layout.
"""
from typing import Dict, Optional, Tuple

import torch

from .key_mapping import ConversionResult, convert_with_separate_clip, first_match

_ENC = 'mask_encoder.image_encoder'
_PROMPT = 'pixel_decoder.prompt_encoder'
_DEC = 'pixel_decoder.mask_decoder'
_ATTN = r'(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)'
_PROJ = r'(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)'

# segment_anything's ``Sam`` (keys as in ``sam_vit_h_4b8939.pth``) -> the toolbox's transformers
# modules, as (regular expression, template); the first full match wins.
SAM_KEY_MAP: Tuple[Tuple[str, str], ...] = (
    # ImageEncoderViT -> SamVisionEncoder
    (r'image_encoder\.patch_embed\.proj\.(weight|bias)', _ENC + r'.patch_embed.projection.\1'),
    (r'image_encoder\.pos_embed', _ENC + '.pos_embed'),
    (r'image_encoder\.blocks\.(\d+)\.norm([12])\.(weight|bias)',
     _ENC + r'.layers.\1.layer_norm\2.\3'),
    (r'image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)',
     _ENC + r'.layers.\1.attn.\2.\3'),
    (r'image_encoder\.blocks\.(\d+)\.attn\.rel_pos_([hw])', _ENC + r'.layers.\1.attn.rel_pos_\2'),
    (r'image_encoder\.blocks\.(\d+)\.mlp\.lin([12])\.(weight|bias)',
     _ENC + r'.layers.\1.mlp.lin\2.\3'),
    (r'image_encoder\.neck\.0\.weight', _ENC + '.neck.conv1.weight'),
    (r'image_encoder\.neck\.1\.(weight|bias)', _ENC + r'.neck.layer_norm1.\1'),
    (r'image_encoder\.neck\.2\.weight', _ENC + '.neck.conv2.weight'),
    (r'image_encoder\.neck\.3\.(weight|bias)', _ENC + r'.neck.layer_norm2.\1'),
    # PromptEncoder -> SamPromptEncoder (the Fourier matrix is a buffer there, a parameter here)
    (r'prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix',
     _PROMPT + '.shared_embedding.positional_embedding'),
    (r'prompt_encoder\.point_embeddings\.(\d+)\.weight', _PROMPT + r'.point_embed.\1.weight'),
    (r'prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight', _PROMPT + r'.\1.weight'),
    (r'prompt_encoder\.mask_downscaling\.0\.(weight|bias)', _PROMPT + r'.mask_embed.conv1.\1'),
    (r'prompt_encoder\.mask_downscaling\.1\.(weight|bias)',
     _PROMPT + r'.mask_embed.layer_norm1.\1'),
    (r'prompt_encoder\.mask_downscaling\.3\.(weight|bias)', _PROMPT + r'.mask_embed.conv2.\1'),
    (r'prompt_encoder\.mask_downscaling\.4\.(weight|bias)',
     _PROMPT + r'.mask_embed.layer_norm2.\1'),
    (r'prompt_encoder\.mask_downscaling\.6\.(weight|bias)', _PROMPT + r'.mask_embed.conv3.\1'),
    # MaskDecoder -> SamMaskDecoder
    (r'mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.(weight|bias)',
     _DEC + r'.transformer.layers.\1.layer_norm\2.\3'),
    (r'mask_decoder\.transformer\.layers\.(\d+)\.' + _ATTN + r'\.' + _PROJ,
     _DEC + r'.transformer.layers.\1.\2.\3.\4'),
    (r'mask_decoder\.transformer\.layers\.(\d+)\.mlp\.lin([12])\.(weight|bias)',
     _DEC + r'.transformer.layers.\1.mlp.lin\2.\3'),
    (r'mask_decoder\.transformer\.final_attn_token_to_image\.' + _PROJ,
     _DEC + r'.transformer.final_attn_token_to_image.\1.\2'),
    (r'mask_decoder\.transformer\.norm_final_attn\.(weight|bias)',
     _DEC + r'.transformer.layer_norm_final_attn.\1'),
    (r'mask_decoder\.(iou_token|mask_tokens)\.weight', _DEC + r'.\1.weight'),
    (r'mask_decoder\.output_upscaling\.0\.(weight|bias)', _DEC + r'.upscale_conv1.\1'),
    (r'mask_decoder\.output_upscaling\.1\.(weight|bias)', _DEC + r'.upscale_layer_norm.\1'),
    (r'mask_decoder\.output_upscaling\.3\.(weight|bias)', _DEC + r'.upscale_conv2.\1'),
    # SAM's 3-layer MLP keeps its layers in a list; transformers' names the first and last.
    (r'mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.'
     r'(weight|bias)', _DEC + r'.\1.proj_in.\2'),
    (r'mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.1\.'
     r'(weight|bias)', _DEC + r'.\1.layers.0.\2'),
    (r'mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.2\.'
     r'(weight|bias)', _DEC + r'.\1.proj_out.\2'),
)

# (official key, toolbox key) of a LISA checkpoint. The LLM targets are written without peft's
# wrapper (``llm.model.`` is the transformers ``*ForCausalLM``).
LISA_KEY_MAP: Tuple[Tuple[str, str], ...] = (
    (r'model\.(embed_tokens|layers|norm)\.(.+)', r'llm.model.model.\1.\2'),
    (r'lm_head\.weight', r'llm.model.lm_head.weight'),
    (r'model\.vision_tower\.vision_tower\.vision_model\.(.+)', r'vision_encoder.vision_model.\1'),
    (r'model\.mm_projector\.(weight|bias)', r'projector.layers.0.\1'),
    (r'model\.text_hidden_fcs\.0\.([02])\.(weight|bias)', r'pixel_decoder.text_hidden_fcs.\1.\2'),
) + tuple((r'model\.visual_model\.' + pattern, template) for pattern, template in SAM_KEY_MAP)

# Weights the toolbox recomputes, with the reason the report gives.
LISA_DROPPED: Tuple[Tuple[str, str], ...] = (
    (r'.+\.rotary_emb\.inv_freq', 'rotary-embedding buffer, recomputed from the config'),
    (r'.+\.embeddings\.position_ids', 'CLIP position-id buffer, recomputed'),
)


def map_lisa_key(key: str) -> Optional[str]:
    """The toolbox key of a key of a LISA checkpoint.

    Args:
        key (str): A key of the official state dict.

    Returns:
        str | None: The key without peft's wrapper, or None if no rule of
        :data:`LISA_KEY_MAP` matches.
    """
    return first_match(key, LISA_KEY_MAP)


def map_sam_key(key: str) -> Optional[str]:
    """The toolbox key of a key of a segment_anything checkpoint (``sam_vit_h_4b8939.pth``).

    Args:
        key (str): ``image_encoder.*``, ``prompt_encoder.*`` or ``mask_decoder.*``.

    Returns:
        str | None: ``mask_encoder.image_encoder.*`` or ``pixel_decoder.*``, or None if no rule
        of :data:`SAM_KEY_MAP` matches.
    """
    return first_match(key, SAM_KEY_MAP)


def convert_official_lisa(official: Dict[str, torch.Tensor],
                          target: Dict[str, torch.Tensor],
                          clip: Optional[Dict[str, torch.Tensor]] = None,
                          lora_seed: int = 0,
                          source: str = 'checkpoint') -> ConversionResult:
    """Convert a LISA state dict to the state dict of the toolbox's LISA components.

    Besides renaming (:data:`LISA_KEY_MAP`):

    * the official token tables hold every row (LLaMA's 32000 and the added ``[SEG]``,
      ``<im_start>``, ``<im_end>``, in that order of ids); they are split into the LLM's base
      table and its ``new_embed`` / ``new_head`` rows;
    * CLIP is taken from the checkpoint if it has it (the released folders do not), else from
      ``clip``;
    * LoRA adapters of the toolbox model (the official LoRA is merged into the LLaMA weights)
      start as peft starts them: ``lora_B = 0``, ``lora_A`` Kaiming-uniform from ``lora_seed``;
    * tensors take the model's dtypes.

    Args:
        official (dict[str, Tensor]): The LISA state dict (a released folder read with
            :func:`load_hf_state_dict`).
        target (dict[str, Tensor]): The toolbox model's state dict (meta tensors are enough:
            only keys, shapes and dtypes are read).
        clip (dict[str, Tensor], optional): CLIP vision weights (:func:`clip_vision_weights`),
            used when ``official`` has none.
        lora_seed (int): Seed of the ``lora_A`` initialisation. Defaults to 0.
        source (str): Name of the checkpoint, for messages.

    Returns:
        ConversionResult: The state dict and what was dropped, filled and split.

    Raises:
        CheckpointMismatchError: Any model key left unfilled, any official key without a place
            in the model (listed as ``official -> ours`` where it has a toolbox name), or any
            shape that differs; all of them are listed.
    """
    return convert_with_separate_clip(
        official, target, clip, LISA_KEY_MAP, LISA_DROPPED,
        missing_clip_hint='The released LISA folders hold no CLIP weights (the merge script '
        'saves no "vision_tower" weight): give the CLIP checkpoint LISA was trained with '
        '(openai/clip-vit-large-patch14).',
        lora_seed=lora_seed, source=source)
