"""Rename an official state dict onto a toolbox model's keys, checking that every key has a place.

The official converters (:mod:`.official_pixellm`, :mod:`.official_lisa`) differ in their key
maps and in a few model-specific steps; the walk over the keys, the split of the token tables
into the LLM's base rows and added rows, the LoRA initialisation and the mismatch report are
common and live here.
"""
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from pixellm.models.export import CheckpointMismatchError

# (pattern, template): the first full match wins (:func:`first_match`).
KeyRules = Sequence[Tuple[str, str]]

# Token tables: official (all rows) -> toolbox base table + added rows.
TOKEN_TABLES = {'llm.model.model.embed_tokens.weight': 'llm.new_embed',
                'llm.model.lm_head.weight': 'llm.new_head'}
_LORA = re.compile(r'\.lora_([AB])\.[^.]+\.weight$')
# Where LLaVA-based checkpoints keep the CLIP tower (``CLIPVisionTower.vision_tower``).
LLAVA_CLIP_PREFIX = 'model.vision_tower.vision_tower.vision_model.'


@dataclass
class ConversionResult:
    """What an official-checkpoint conversion returns.

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


def canonical_key(key: str) -> str:
    """A toolbox key without peft's wrapper (``base_model.model.``, ``.base_layer``).

    Args:
        key (str): A key of the toolbox state dict.

    Returns:
        str: The key as the official key maps write it.
    """
    key = re.sub(r'^llm\.model\.base_model\.model\.', 'llm.model.', key)
    return key.replace('.base_layer.', '.')


def first_match(key: str, rules: KeyRules) -> Optional[str]:
    """The template of the first rule whose pattern matches all of ``key``, filled in.

    Args:
        key (str): A key.
        rules (Sequence[tuple[str, str]]): ``(regular expression, template)`` pairs.

    Returns:
        str | None: The expanded template, or None if no pattern matches.
    """
    for pattern, template in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    return None


def _shape(t: torch.Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def convert_state_dict(
        sources: Iterable[Tuple[str, torch.Tensor]],
        target: Dict[str, torch.Tensor],
        key_map: KeyRules,
        dropped: KeyRules,
        resize: Optional[Callable[[str, torch.Tensor, torch.Tensor],
                                  Tuple[torch.Tensor, Optional[str]]]] = None,
        fill: Optional[Callable[[str], Optional[Tuple[torch.Tensor, str]]]] = None,
        hint: Optional[Callable[[List[str]], str]] = None,
        lora_seed: int = 0,
        source: str = 'checkpoint') -> ConversionResult:
    """Map official tensors onto a toolbox state dict; fail naming every key that does not fit.

    For each official key, in order: a match in ``dropped`` leaves it out with that reason; else
    ``key_map`` names its toolbox key (written without peft's wrapper, see
    :func:`canonical_key`). A token table (:data:`TOKEN_TABLES`) is split into the LLM's base
    rows and its added rows. Tensors take the model's dtypes. Then every model key still
    without a tensor is given one by ``fill``, or, for a LoRA adapter of a mapped weight, as
    peft starts it: ``lora_B = 0`` (no change to the outputs) and ``lora_A`` Kaiming-uniform
    from ``lora_seed``.

    Args:
        sources (Iterable[tuple[str, Tensor]]): The official ``(key, tensor)`` pairs.
        target (dict[str, Tensor]): The toolbox model's state dict (meta tensors are enough:
            only keys, shapes and dtypes are read).
        key_map (Sequence[tuple[str, str]]): ``(official pattern, toolbox template)`` rules.
        dropped (Sequence[tuple[str, str]]): ``(official pattern, reason)`` rules.
        resize (Callable, optional): ``resize(ours, value, expected)`` for a tensor whose shape
            differs from the model's; returns the tensor to use and a note (None: unchanged).
        fill (Callable, optional): ``fill(ours)`` for a model key no official tensor filled;
            returns ``(tensor, what it is)`` or None.
        hint (Callable, optional): ``hint(missing keys)``: a line added to the error.
        lora_seed (int): Seed of the ``lora_A`` initialisation. Defaults to 0.
        source (str): Name of the checkpoint, for messages.

    Returns:
        ConversionResult: The state dict and what was dropped, filled and transformed.

    Raises:
        CheckpointMismatchError: Any model key left unfilled, any official key without a place
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

    for key, value in sources:
        reason = first_match(key, dropped)
        if reason is not None:
            result.dropped[key] = reason
            continue
        canonical = first_match(key, key_map)
        if canonical is None:
            unexpected.append(key)
            continue
        ours = by_canonical.get(canonical)
        if canonical in TOKEN_TABLES:
            added = TOKEN_TABLES[canonical]
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
        if ours is None:
            unexpected.append(f'{key} -> {canonical} (not in the model)')
            continue
        if resize is not None and _shape(value) != _shape(target[ours]):
            value, note = resize(ours, value, target[ours])
            if note:
                result.notes.append(note)
        put(ours, value, key)

    lora_gen = torch.Generator().manual_seed(lora_seed)
    for key in target:
        if key in out or key in misfit:
            continue
        filled = fill(key) if fill is not None else None
        lora = _LORA.search(key)
        if filled is not None:
            value, what = filled
            out[key] = value.to(target[key].dtype)
            result.filled[key] = what
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
        raise CheckpointMismatchError(f'Checkpoint {source!r}', missing, unexpected,
                                      wrong_shape, hint(missing) if hint else '')
    return result


def convert_with_separate_clip(official: Dict[str, torch.Tensor],
                               target: Dict[str, torch.Tensor],
                               clip: Optional[Dict[str, torch.Tensor]],
                               key_map: KeyRules,
                               dropped: KeyRules,
                               missing_clip_hint: str,
                               **kwargs) -> ConversionResult:
    """:func:`convert_state_dict` for a LLaVA-based checkpoint whose CLIP tower may be apart.

    The official merge scripts of PixelLM and LISA save no ``vision_tower`` weight, so CLIP comes
    from its own checkpoint: ``clip`` is read under LLaVA's names (:data:`LLAVA_CLIP_PREFIX`)
    when ``official`` has no CLIP, and left unused (with a note) when it has.

    Args:
        official (dict[str, Tensor]): The official state dict.
        target (dict[str, Tensor]): The toolbox model's state dict.
        clip (dict[str, Tensor], optional): CLIP vision weights, keyed relative to the vision
            model (``embeddings.*``, ``encoder.*``...).
        key_map (Sequence[tuple[str, str]]): See :func:`convert_state_dict`.
        dropped (Sequence[tuple[str, str]]): See :func:`convert_state_dict`.
        missing_clip_hint (str): Added to the error when CLIP weights are missing and neither
            ``official`` nor ``clip`` has them.
        **kwargs: The other arguments of :func:`convert_state_dict`.

    Returns:
        ConversionResult: As :func:`convert_state_dict`.
    """
    has_vision = any(k.startswith('model.vision_tower.') for k in official)
    sources = list(official.items())
    if not has_vision and clip is not None:
        sources += [(LLAVA_CLIP_PREFIX + k, v) for k, v in clip.items()]

    def hint(missing: List[str]) -> str:
        if not has_vision and clip is None and any(k.startswith('vision_encoder.')
                                                   for k in missing):
            return missing_clip_hint
        return ''

    result = convert_state_dict(sources, target, key_map, dropped, hint=hint, **kwargs)
    if has_vision and clip is not None:
        result.notes.append('CLIP weights taken from the checkpoint; the separate CLIP weights '
                            'were not used')
    return result
