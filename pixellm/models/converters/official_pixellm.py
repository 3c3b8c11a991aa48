"""Map a checkpoint of the official PixelLM code (merged ``hf_model``) onto the toolbox's PixelLM.

The official ``PixelLMForCausalLM`` is a ``LlamaForCausalLM`` whose ``model`` also holds the
projectors and the pixel decoder. Its merge script (``merge_lora_weights_and_save_hf_model.py``)
merges LoRA into the LLaMA weights and saves every weight except those whose name contains
``vision_tower``, so the released folders hold no CLIP weights: CLIP comes from its own checkpoint
(``openai/clip-vit-large-patch14-336``), resized to 448 as the official code resizes it.
"""
import math
from typing import Dict, Optional, Tuple

import torch

from pixellm.models.vision_encoders import interpolate_position_embedding
from .hf_checkpoint import load_hf_state_dict
from .key_mapping import (ConversionResult, canonical_key, convert_with_separate_clip,
                          first_match)

__all__ = ['OFFICIAL_KEY_MAP', 'OFFICIAL_DROPPED', 'ConversionResult', 'canonical_key',
           'clip_vision_weights', 'convert_official_pixellm', 'dropped_reason',
           'load_clip_vision_weights', 'map_official_key', 'official_fusion_weights']

# (official key, toolbox key) as regular expression and template; the first full match wins.
# The LLM targets are written without peft's wrapper (``llm.model.`` is the transformers
# ``*ForCausalLM``); :func:`convert_official_pixellm` resolves them against the model's keys.
OFFICIAL_KEY_MAP: Tuple[Tuple[str, str], ...] = (
    (r'model\.(embed_tokens|layers|norm)\.(.+)', r'llm.model.model.\1.\2'),
    (r'lm_head\.weight', r'llm.model.lm_head.weight'),
    (r'model\.vision_tower\.vision_tower\.vision_model\.(.+)', r'vision_encoder.vision_model.\1'),
    (r'model\.mm_projector\.(\d+)\.(weight|bias)', r'projector.layers.\1.\2'),
    (r'model\.out_mm_projector\.(\d+)\.(weight|bias)', r'mask_projector.layers.\1.\2'),
    (r'model\.text_hidden_fcs\.0\.(\d+)\.(weight|bias)', r'pixel_decoder.text_hidden_fcs.\1.\2'),
    (r'model\.image_feature_neck\.(\d+)\.(weight|bias)',
     r'pixel_decoder.image_feature_neck.\1.\2'),
    (r'model\.prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix',
     r'pixel_decoder.pe_layer.gaussian_matrix'),
    (r'model\.prompt_encoder\.no_mask_embed\.weight', r'pixel_decoder.no_mask_embed.weight'),
    (r'model\.mask_decoder\.pe1\.positional_encoding_gaussian_matrix',
     r'pixel_decoder.pe_upsampled.gaussian_matrix'),
    (r'model\.mask_decoder\.transformer\.(\d+)\.(layers\.\d+)\.mlp\.lin1\.(weight|bias)',
     r'pixel_decoder.transformers.\1.\2.mlp.0.\3'),
    (r'model\.mask_decoder\.transformer\.(\d+)\.(layers\.\d+)\.mlp\.lin2\.(weight|bias)',
     r'pixel_decoder.transformers.\1.\2.mlp.2.\3'),
    (r'model\.mask_decoder\.transformer\.(\d+)\.(.+)', r'pixel_decoder.transformers.\1.\2'),
    (r'model\.mask_decoder\.((?:iou_token|mask_tokens|level_embed|output_upscaling|upsample_2x|'
     r'output_hypernetworks_mlps|iou_prediction_head)\..+)', r'pixel_decoder.\1'),
)

# Official weights the toolbox has no use for, with the reason the report gives.
OFFICIAL_DROPPED: Tuple[Tuple[str, str], ...] = (
    (r'model\.prompt_encoder\.(?:point_embeddings|not_a_point_embed|mask_downscaling)\..+',
     'SAM point/box/mask prompt encoders: PixelLM prompts the decoder with text only'),
    (r'.+\.rotary_emb\.inv_freq', 'rotary-embedding buffer, recomputed from the config'),
    (r'.+\.embeddings\.position_ids', 'CLIP position-id buffer, recomputed'),
)

_VISION_PREFIX = 'vision_encoder.vision_model.'
_POS_EMBED = _VISION_PREFIX + 'embeddings.position_embedding.weight'
_TOKEN_FUSION = 'pixel_decoder.token_fusion'
_SCALE_FUSION = 'pixel_decoder.scale_fusion'
_CLIP_NON_VISION = ('text_model.', 'text_projection.', 'visual_projection.', 'logit_scale')


def official_fusion_weights(num_scales: int, tokens_per_scale: int) -> Tuple[float, float]:
    """The constant token- and scale-fusion weights of the official code.

    It keeps them in plain Python lists (``multiseg_scalar``, ``multiscale_scalar``), so they are
    never trained nor saved. ``multiseg_scalar`` is sized by *all* codebook tokens
    (``len(seg_token_idx) = num_scales * tokens_per_scale``), and its first ``tokens_per_scale``
    entries weight the tokens of every scale; with one token per scale it is not used.

    Args:
        num_scales (int): ``image_feature_scale_num``.
        tokens_per_scale (int): ``seg_token_num``.

    Returns:
        tuple[float, float]: Weight of each token (1/6 for PixelLM-7B/13B) and of each scale
        (1/2).
    """
    token = 1.0 if tokens_per_scale == 1 else 1.0 / (num_scales * tokens_per_scale)
    return token, 1.0 / num_scales


def map_official_key(key: str) -> Optional[str]:
    """The toolbox key of an official key.

    Args:
        key (str): A key of the official state dict.

    Returns:
        str | None: The key without peft's wrapper (see :func:`canonical_key`), or None if no
        rule of :data:`OFFICIAL_KEY_MAP` matches.
    """
    return first_match(key, OFFICIAL_KEY_MAP)


def dropped_reason(key: str) -> Optional[str]:
    """Why an official key is left out.

    Args:
        key (str): A key of the official state dict.

    Returns:
        str | None: The reason, or None if the key is not one of :data:`OFFICIAL_DROPPED`.
    """
    return first_match(key, OFFICIAL_DROPPED)


def clip_vision_weights(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The vision-tower weights of a CLIP checkpoint, keyed relative to the vision model.

    Accepts a ``CLIPModel`` / ``CLIPVisionModel`` file (``vision_model.*``) or a vision model
    saved without that prefix (``embeddings.*``, ``encoder.*``...).

    Args:
        state (dict[str, Tensor]): The CLIP checkpoint.

    Returns:
        dict[str, Tensor]: ``embeddings.*``, ``pre_layrnorm.*``, ``encoder.*``,
        ``post_layernorm.*``.
    """
    if any(k.startswith('vision_model.') for k in state):
        return {k[len('vision_model.'):]: v for k, v in state.items()
                if k.startswith('vision_model.')}
    return {k: v for k, v in state.items() if not k.startswith(_CLIP_NON_VISION)}


def load_clip_vision_weights(path: str) -> Dict[str, torch.Tensor]:
    """Read the vision-tower weights of a CLIP checkpoint, leaving its text tower on disk.

    Args:
        path (str): A CLIP folder (``openai/clip-vit-large-patch14-336`` downloaded) or file.

    Returns:
        dict[str, Tensor]: As :func:`clip_vision_weights`.
    """
    return clip_vision_weights(
        load_hf_state_dict(path, select=lambda k: not k.startswith(_CLIP_NON_VISION)))


def convert_official_pixellm(official: Dict[str, torch.Tensor],
                             target: Dict[str, torch.Tensor],
                             clip: Optional[Dict[str, torch.Tensor]] = None,
                             pos_embed_layout: str = 'official',
                             lora_seed: int = 0,
                             source: str = 'checkpoint') -> ConversionResult:
    """Convert an official PixelLM state dict to the toolbox's PixelLM state dict.

    Besides renaming (:data:`OFFICIAL_KEY_MAP`):

    * the official token tables hold every row (base vocabulary and added tokens, all trained);
      they are split into the LLM's base table and its ``new_embed`` / ``new_head`` rows;
    * CLIP is taken from the checkpoint if it has it, else from ``clip``; a position table of
      another grid is resized with ``pos_embed_layout`` (``'official'``: as the official
      ``--resize_vision_tower`` does, see :func:`interpolate_position_embedding`);
    * the fusion weights, plain lists in the official code, get the official constants
      (:func:`official_fusion_weights`);
    * LoRA adapters (the official LoRA is merged into the LLaMA weights) start as peft starts
      them: ``lora_B = 0`` (no change to the outputs), ``lora_A`` Kaiming-uniform from
      ``lora_seed``;
    * tensors take the model's dtypes.

    Args:
        official (dict[str, Tensor]): The official state dict.
        target (dict[str, Tensor]): The toolbox model's state dict (meta tensors are enough: only
            keys, shapes and dtypes are read).
        clip (dict[str, Tensor], optional): CLIP vision weights (:func:`clip_vision_weights`),
            used when ``official`` has none.
        pos_embed_layout (str): ``'official'`` or ``'clip'``. Defaults to ``'official'``.
        lora_seed (int): Seed of the ``lora_A`` initialisation. Defaults to 0.
        source (str): Name of the checkpoint, for messages.

    Returns:
        ConversionResult: The state dict and what was dropped, filled and transformed.

    Raises:
        CheckpointMismatchError: Any target key left unfilled, any official key without a place
            in the model (listed as ``official -> ours`` where it has a toolbox name), or any
            shape that differs; all of them are listed.
    """
    def resize(ours: str, value: torch.Tensor,
               expected: torch.Tensor) -> Tuple[torch.Tensor, Optional[str]]:
        rows = expected.shape[0]
        grid = math.isqrt(rows - 1)
        if (ours == _POS_EMBED and grid * grid == rows - 1
                and value.shape[1:] == expected.shape[1:]):
            note = f'{ours}: {value.shape[0]} -> {rows} rows, bilinear, {pos_embed_layout!r} layout'
            return interpolate_position_embedding(value.float(), grid, pos_embed_layout), note
        return value, None

    fusion = _TOKEN_FUSION in target and _SCALE_FUSION in target

    def fill(key: str) -> Optional[Tuple[torch.Tensor, str]]:
        if not fusion or key not in (_TOKEN_FUSION, _SCALE_FUSION):
            return None
        token_w, scale_w = official_fusion_weights(target[_SCALE_FUSION].numel(),
                                                   target[_TOKEN_FUSION].numel())
        value = token_w if key == _TOKEN_FUSION else scale_w
        return (torch.full(target[key].shape, value, dtype=target[key].dtype),
                f'{value:.6g} (official constant, a plain list in the official code and so not '
                'in its checkpoint)')

    return convert_with_separate_clip(
        official, target, clip, OFFICIAL_KEY_MAP, OFFICIAL_DROPPED,
        missing_clip_hint='The official merge script leaves CLIP out of hf_model (it drops every '
        '"vision_tower" weight): give the CLIP checkpoint the model was trained with (PixelLM: '
        'openai/clip-vit-large-patch14-336).',
        resize=resize, fill=fill, lora_seed=lora_seed, source=source)
