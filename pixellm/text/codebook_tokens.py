"""Codebook token strings and the expansion of answer placeholders into them.

Kept free of torch so that data pipelines can expand answers without building a model.
"""
from typing import List

from pixellm.utils.constants import SEG_PLACEHOLDER


def codebook_token_strings(num_scales: int, tokens_per_scale: int,
                           token_format: str = '[SEG{}]') -> List[str]:
    """Return the codebook's token strings in scale-major order.

    PixelLM writes one target as ``num_scales * tokens_per_scale`` tokens; the official code names
    them ``[SEG0] .. [SEG{n-1}]`` and groups them as ``(scales, tokens_per_scale)``.

    Args:
        num_scales (int): Number of image-feature scales (``image_feature_scale_num``).
        tokens_per_scale (int): Tokens per scale (``seg_token_num``).
        token_format (str): Format string with one ``{}`` for the index. Defaults to ``'[SEG{}]'``.
            A codebook of a single token may name it without an index (LISA's ``'[SEG]'``).

    Returns:
        list[str]: ``num_scales * tokens_per_scale`` distinct token strings.
    """
    if num_scales < 1 or tokens_per_scale < 1:
        raise ValueError(f'codebook needs num_scales >= 1 and tokens_per_scale >= 1, got '
                         f'num_scales={num_scales}, tokens_per_scale={tokens_per_scale}')
    count = num_scales * tokens_per_scale
    if count == 1 and '{}' not in token_format:
        return [token_format]
    if token_format.count('{}') != 1:
        raise ValueError(f"token_format must contain exactly one '{{}}' (a single-token codebook "
                         f"may have none), got {token_format!r} for {count} tokens")
    return [token_format.format(i) for i in range(count)]


def target_string(tokens: List[str]) -> str:
    """Return how one target is written in an answer: the codebook tokens joined by spaces."""
    return ' '.join(tokens)


def expand_seg_placeholders(text: str, tokens: List[str],
                            placeholder: str = SEG_PLACEHOLDER) -> str:
    """Replace every target placeholder in ``text`` with the codebook tokens of one target.

    Args:
        text (str): Answer text with one ``placeholder`` per target, e.g. ``'It is {seg}.'``.
        tokens (list[str]): Codebook token strings (see :func:`codebook_token_strings`).
        placeholder (str): Placeholder written by the datasets. Defaults to ``'{seg}'``.

    Returns:
        str: The answer as the LLM is trained to write it.
    """
    return text.replace(placeholder, target_string(tokens))


def count_seg_placeholders(text: str, placeholder: str = SEG_PLACEHOLDER) -> int:
    """Return how many targets an answer with placeholders names."""
    return text.count(placeholder)


def codebook_cfg_tokens(cfg: dict) -> List[str]:
    """Token strings of a ``SegCodebook`` config dict (its defaults: 2 scales x 3 tokens)."""
    return codebook_token_strings(cfg.get('num_scales', 2), cfg.get('tokens_per_scale', 3),
                                  cfg.get('token_format', '[SEG{}]'))
