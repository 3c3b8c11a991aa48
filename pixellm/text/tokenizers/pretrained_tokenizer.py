"""A Hugging Face tokenizer (hub name or local folder) with PixelLM's token conventions."""
from typing import Sequence

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pixellm.registry import TOKENIZERS
from .builder import configure_tokenizer


@TOKENIZERS.register_module()
def PretrainedTokenizer(name_or_path: str,  # noqa: N802 (named as its config type)
                        use_im_start_end: bool = False,
                        model_max_length: int = 512,
                        padding_side: str = 'right',
                        trust_remote_code: bool = False,
                        extra_tokens: Sequence[str] = (),
                        **kwargs) -> PreTrainedTokenizerBase:
    """Load a tokenizer with ``AutoTokenizer.from_pretrained`` and set it up as the official code.

    ``pad_token`` becomes ``unk_token`` (LLaVA v1); see
    :func:`~pixellm.text.tokenizers.builder.configure_tokenizer`. transformers 5 loads only
    fast (``tokenizers``-backed) tokenizers, so the official ``use_fast=False`` has no
    equivalent; a LLaMA checkpoint's ``tokenizer.json`` gives the same ids as its
    sentencepiece model. A function named like a class because configs name it
    ``dict(type='PretrainedTokenizer')``.

    Args:
        name_or_path (str): Hub name or local folder (e.g. a LLaVA v1 checkpoint).
        use_im_start_end (bool): Add ``<im_start>``/``<im_end>`` special tokens. Defaults to False.
        model_max_length (int): Maximum sequence length. Defaults to 512.
        padding_side (str): ``'right'`` or ``'left'``. Defaults to ``'right'``.
        trust_remote_code (bool): Allow tokenizer code from the checkpoint. Defaults to False.
        extra_tokens (Sequence[str]): Tokens to add (e.g. ``[SEG0]``...), before
            ``<im_start>``/``<im_end>``. Defaults to ().
        **kwargs: Passed to ``AutoTokenizer.from_pretrained`` (``revision``, ``cache_dir``...).

    Returns:
        transformers.PreTrainedTokenizerBase: The tokenizer.
    """
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code,
                                              **kwargs)
    return configure_tokenizer(tokenizer, use_im_start_end=use_im_start_end,
                               extra_tokens=extra_tokens, model_max_length=model_max_length,
                               padding_side=padding_side)
