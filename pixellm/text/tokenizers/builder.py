"""Build a tokenizer from a config dict, and the token set-up every PixelLM tokenizer shares.

The model and the data pipeline build their tokenizers from the same config, so everything that
changes token ids (added tokens and their order) is decided here, from config values only.
"""
from typing import Any, Sequence

from transformers import PreTrainedTokenizerBase

from pixellm.registry import TOKENIZERS
from pixellm.utils.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN


def configure_tokenizer(tokenizer: PreTrainedTokenizerBase,
                        use_im_start_end: bool = False,
                        extra_tokens: Sequence[str] = (),
                        model_max_length: int = 512,
                        padding_side: str = 'right') -> PreTrainedTokenizerBase:
    """Apply PixelLM's (LLaVA v1's) tokenizer conventions in place and return the tokenizer.

    * ``pad_token`` becomes ``unk_token`` as in the official code; a tokenizer without an unk
      token (Qwen, LLaMA-3) keeps its pad token, or gets ``eos_token`` when it has none.
    * ``extra_tokens`` (e.g. the codebook tokens ``[SEG0]``...) are added as normal tokens, then
      ``<im_start>``/``<im_end>`` as special tokens: the official order, so new ids match the
      official checkpoints.

    Args:
        tokenizer (PreTrainedTokenizerBase): Tokenizer to set up.
        use_im_start_end (bool): Add ``<im_start>`` and ``<im_end>``. Defaults to False.
        extra_tokens (Sequence[str]): Tokens to add, in order. Defaults to ().
        model_max_length (int): Maximum sequence length recorded on the tokenizer.
            Defaults to 512.
        padding_side (str): ``'right'`` (training, the default) or ``'left'`` (batched generation).

    Returns:
        PreTrainedTokenizerBase: ``tokenizer`` itself.
    """
    if padding_side not in ('left', 'right'):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = model_max_length
    tokenizer.padding_side = padding_side
    if isinstance(extra_tokens, str):
        # A bare string would otherwise be added character by character.
        extra_tokens = [extra_tokens]
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens))
    if use_im_start_end:
        tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
    return tokenizer


def build_tokenizer(cfg: Any) -> PreTrainedTokenizerBase:
    """Build a tokenizer from ``dict(type=..., ...)`` or return an already built one unchanged.

    Args:
        cfg (dict | ConfigDict | PreTrainedTokenizerBase): Config of a registered tokenizer
            builder (``TinyTokenizer``, ``PretrainedTokenizer``, a plugin's), or a tokenizer.

    Returns:
        PreTrainedTokenizerBase: The tokenizer.
    """
    if isinstance(cfg, PreTrainedTokenizerBase):
        return cfg
    if isinstance(cfg, dict):
        tokenizer = TOKENIZERS.build(cfg)
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(f'tokenizer config {cfg!r} built a {type(tokenizer).__name__}, '
                            'expected a transformers tokenizer')
        return tokenizer
    raise TypeError('build_tokenizer expects a config dict with a "type" key or a transformers '
                    f'tokenizer, got {type(cfg).__name__}')


def codebook_tokenizer_cfg(cfg: dict, codebook_tokens: Sequence[str],
                           use_im_start_end: bool = False) -> dict:
    """Return a tokenizer config that adds ``codebook_tokens`` before ``<im_start>/<im_end>``.

    The model and the data pipeline both build their tokenizer through this function from the
    same tokenizer and codebook configs, so the codebook tokens get the same ids on both sides (in
    the official order). Tokens already listed in ``extra_tokens`` must be all of the codebook's,
    in order.

    Args:
        cfg (dict): Tokenizer config (``dict(type=...)``).
        codebook_tokens (Sequence[str]): The codebook's token strings.
        use_im_start_end (bool): The model wraps the image in ``<im_start>``/``<im_end>``.

    Returns:
        dict: A new config.
    """
    cfg = dict(cfg)
    if bool(cfg.setdefault('use_im_start_end', use_im_start_end)) != bool(use_im_start_end):
        raise ValueError(f'tokenizer use_im_start_end={cfg["use_im_start_end"]} but the model '
                         f'has use_im_start_end={use_im_start_end}; set one value')
    extra = list(cfg.get('extra_tokens', []))
    tokens = list(codebook_tokens)
    present = [t for t in extra if t in tokens]
    if present and present != tokens:
        raise ValueError(f'tokenizer extra_tokens list {present} of the codebook tokens; list all '
                         f'of {tokens}, in order, or none (they are then appended)')
    if not present:
        cfg['extra_tokens'] = extra + tokens
    return cfg
