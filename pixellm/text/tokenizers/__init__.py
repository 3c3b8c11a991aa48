"""Tokenizer builders registered in ``TOKENIZERS``; importing this package registers them."""
from .builder import build_tokenizer, codebook_tokenizer_cfg, configure_tokenizer
from .pretrained_tokenizer import PretrainedTokenizer
from .tiny_tokenizer import TINY_TOKENIZER_FILE, TinyTokenizer

__all__ = [
    'codebook_tokenizer_cfg',
    'build_tokenizer', 'configure_tokenizer', 'PretrainedTokenizer', 'TinyTokenizer',
    'TINY_TOKENIZER_FILE'
]
