"""Map a checkpoint of the official PixelLM code (merged ``hf_model``) onto the toolbox's PixelLM.

The official ``PixelLMForCausalLM`` is a ``LlamaForCausalLM`` whose ``model`` also holds the
projectors and the pixel decoder. Its merge script (``merge_lora_weights_and_save_hf_model.py``)
merges LoRA into the LLaMA weights and saves every weight except those whose name contains
``vision_tower``, so the released folders hold no CLIP weights: CLIP comes from its own checkpoint
(``openai/clip-vit-large-patch14-336``), resized to 448 as the official code resizes it.
"""
import math
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from pixellm.models.export import CheckpointMismatchError
from pixellm.models.vision_encoders import interpolate_position_embedding
from .hf_checkpoint import load_hf_state_dict

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
# Token tables: official (all rows) -> toolbox base table + added rows.
_TOKEN_TABLES = {'llm.model.model.embed_tokens.weight': 'llm.new_embed',
                 'llm.model.lm_head.weight': 'llm.new_head'}
_TOKEN_FUSION = 'pixel_decoder.token_fusion'
_SCALE_FUSION = 'pixel_decoder.scale_fusion'
_LORA = re.compile(r'\.lora_([AB])\.[^.]+\.weight$')
_CLIP_NON_VISION = ('text_model.', 'text_projection.', 'visual_projection.', 'logit_scale')


@dataclass
class ConversionResult:
    """What :func:`convert_official_pixellm` returns.

    Attributes:
        state_dict (dict[str, Tensor]): The toolbox state dict, keys and shapes exactly the model's.
        dropped (dict[str, str]): Official keys left out, with the reason.
        filled (dict[str, str]): Model keys with no official tensor, with the value they got.
        notes (list[str]): Other transformations (token-table split, position-table resize).
    """

    state_dict: Dict[str, torch.Tensor]
    dropped: Dict[str, str] = field(default_factory=dict)
    filled: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


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


def canonical_key(key: str) -> str:
    """A toolbox key without peft's wrapper (``base_model.model.``, ``.base_layer``).

    Args:
        key (str): A key of the toolbox state dict.

    Returns:
        str: The key as :data:`OFFICIAL_KEY_MAP` writes it.
    """
    key = re.sub(r'^llm\.model\.base_model\.model\.', 'llm.model.', key)
    return key.replace('.base_layer.', '.')


def map_official_key(key: str) -> Optional[str]:
    """The toolbox key of an official key.

    Args:
        key (str): A key of the official state dict.

    Returns:
        str | None: The key without peft's wrapper (see :func:`canonical_key`), or None if no
        rule of :data:`OFFICIAL_KEY_MAP` matches.
    """
    for pattern, template in OFFICIAL_KEY_MAP:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    return None


def dropped_reason(key: str) -> Optional[str]:
    """Why an official key is left out.

    Args:
        key (str): A key of the official state dict.

    Returns:
        str | None: The reason, or None if the key is not one of :data:`OFFICIAL_DROPPED`.
    """
    for pattern, reason in OFFICIAL_DROPPED:
        if re.fullmatch(pattern, key):
            return reason
    return None


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


def _shape(t: torch.Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


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
    result = ConversionResult(state_dict={})
    by_canonical = {canonical_key(k): k for k in target}
    out = result.state_dict
    missing, unexpected, wrong_shape = [], [], []
    misfit = set()  # model keys reported with a wrong shape, not again as missing

    def put(ours: str, value: torch.Tensor, official_key: str) -> None:
        expected = target[ours]
        if _shape(value) != _shape(expected):
            wrong_shape.append((f'{official_key} -> {ours}', _shape(value), _shape(expected)))
            misfit.add(ours)
            return
        out[ours] = value.to(expected.dtype)

    has_vision = any(k.startswith('model.vision_tower.') for k in official)
    sources = list(official.items())
    if not has_vision and clip is not None:
        sources += [(f'model.vision_tower.vision_tower.vision_model.{k}', v)
                    for k, v in clip.items()]
    for key, value in sources:
        reason = dropped_reason(key)
        if reason is not None:
            result.dropped[key] = reason
            continue
        canonical = map_official_key(key)
        if canonical is None:
            unexpected.append(key)
            continue
        if canonical in _TOKEN_TABLES:
            ours = by_canonical.get(canonical)
            added = _TOKEN_TABLES[canonical]
            if ours is None or added not in target:
                unexpected.append(f'{key} -> {canonical} (not in the model)')
                continue
            base, extra = target[ours].shape[0], target[added].shape[0]
            if value.shape[0] != base + extra or value.shape[1:] != target[ours].shape[1:]:
                wrong_shape.append((f'{key} -> {ours} ({base} base rows) + {added} ({extra} '
                                    'added rows)', _shape(value),
                                    (base + extra, *target[ours].shape[1:])))
                misfit.update((ours, added))
                continue
            # Copies, so that the saved base table does not carry the storage of all rows.
            put(ours, value[:base].clone(), key)
            put(added, value[base:].clone(), key)
            result.notes.append(f'{key}: rows [0, {base}) -> {ours}, rows [{base}, '
                                f'{base + extra}) -> {added}')
            continue
        ours = by_canonical.get(canonical)
        if ours is None:
            unexpected.append(f'{key} -> {canonical} (not in the model)')
            continue
        if ours == _POS_EMBED and value.shape[0] != target[ours].shape[0]:
            rows = target[ours].shape[0]
            grid = math.isqrt(rows - 1)
            if grid * grid == rows - 1 and value.shape[1:] == target[ours].shape[1:]:
                result.notes.append(f'{ours}: {value.shape[0]} -> {rows} rows, bilinear, '
                                    f'{pos_embed_layout!r} layout')
                value = interpolate_position_embedding(value.float(), grid, pos_embed_layout)
        put(ours, value, key)

    if has_vision and clip is not None:
        result.notes.append('CLIP weights taken from the checkpoint; the separate CLIP weights '
                            'were not used')
    fusion = _TOKEN_FUSION in target and _SCALE_FUSION in target
    lora_gen = torch.Generator().manual_seed(lora_seed)
    for key in target:
        if key in out or key in misfit:
            continue
        lora = _LORA.search(key)
        if fusion and key in (_TOKEN_FUSION, _SCALE_FUSION):
            token_w, scale_w = official_fusion_weights(target[_SCALE_FUSION].numel(),
                                                       target[_TOKEN_FUSION].numel())
            value = token_w if key == _TOKEN_FUSION else scale_w
            out[key] = torch.full(target[key].shape, value, dtype=target[key].dtype)
            result.filled[key] = (f'{value:.6g} (official constant, a plain list in the official '
                                  'code and so not in its checkpoint)')
        elif lora and canonical_key(key).replace(lora.group(0), '.weight') in by_canonical:
            tensor = torch.zeros(target[key].shape, dtype=target[key].dtype)
            if lora.group(1) == 'A':
                torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=lora_gen)
                result.filled[key] = f'Kaiming-uniform (seed {lora_seed}), as peft initialises'
            else:
                result.filled[key] = '0: the merged official LoRA is already in the base weight'
            out[key] = tensor
        else:
            missing.append(key)
    if missing or unexpected or wrong_shape:
        hint = ''
        if any(k.startswith(_VISION_PREFIX) for k in missing) and not has_vision and clip is None:
            hint = ('The official merge script leaves CLIP out of hf_model (it drops every '
                    '"vision_tower" weight): give the CLIP checkpoint the model was trained '
                    'with (PixelLM: openai/clip-vit-large-patch14-336).')
        raise CheckpointMismatchError(f'Checkpoint {source!r}', missing, unexpected,
                                      wrong_shape, hint)
    return result
