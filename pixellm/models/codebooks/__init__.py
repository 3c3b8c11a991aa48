from .seg_codebook import SegCodebook
from .tokens import (codebook_cfg_tokens, codebook_token_strings, count_seg_placeholders,
                     expand_seg_placeholders, target_string)

__all__ = ['SegCodebook', 'codebook_cfg_tokens', 'codebook_token_strings',
           'expand_seg_placeholders', 'count_seg_placeholders', 'target_string']
