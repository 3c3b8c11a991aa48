"""A 1024-token byte-level BPE shipped with the package, for tests and demos without a download."""
import os.path as osp
from typing import Sequence

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pixellm.registry import TOKENIZERS
from .builder import configure_tokenizer

# Written by tools/misc/train_tiny_tokenizer.py; shipped through setup.py's package_data.
TINY_TOKENIZER_FILE = osp.join(osp.dirname(osp.abspath(__file__)), 'assets', 'tiny_tokenizer.json')


@TOKENIZERS.register_module()
def TinyTokenizer(use_im_start_end: bool = False,  # noqa: N802 (named as its config type)
                  model_max_length: int = 512,
                  padding_side: str = 'right',
                  extra_tokens: Sequence[str] = ()) -> PreTrainedTokenizerBase:
    """Build the shipped tiny tokenizer: byte-level BPE, 1024 tokens, LLaMA's special-token layout.

    ``<unk>`` is id 0 (also the pad token, as in LLaVA v1), ``<s>`` id 1 (added in front of every
    encoded text) and ``</s>`` id 2 (never added; chat templates write it). Byte-level means any
    text encodes without ``<unk>`` and ``decode(encode(text)) == text``. A function named like a
    class because configs name it ``dict(type='TinyTokenizer')``.

    Args:
        use_im_start_end (bool): Add ``<im_start>``/``<im_end>`` special tokens. Defaults to False.
        model_max_length (int): Maximum sequence length. Defaults to 512.
        padding_side (str): ``'right'`` or ``'left'``. Defaults to ``'right'``.
        extra_tokens (Sequence[str]): Tokens to add (e.g. ``[SEG0]``...), ids from 1024 on, before
            ``<im_start>``/``<im_end>``. Defaults to ().

    Returns:
        transformers.PreTrainedTokenizerFast: The tokenizer.
    """
    if not osp.isfile(TINY_TOKENIZER_FILE):
        raise FileNotFoundError(f'{TINY_TOKENIZER_FILE} is missing; regenerate it with '
                                'python tools/misc/train_tiny_tokenizer.py')
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=TINY_TOKENIZER_FILE, bos_token='<s>', eos_token='</s>', unk_token='<unk>',
        pad_token='<unk>', add_bos_token=True, add_eos_token=False,
        # Cleaning up spaces would turn ' .' into '.' and break decode(encode(text)) == text.
        clean_up_tokenization_spaces=False)
    return configure_tokenizer(tokenizer, use_im_start_end=use_im_start_end,
                               extra_tokens=extra_tokens, model_max_length=model_max_length,
                               padding_side=padding_side)
