from .seg_codebook import SegCodebook
from .tokens import (codebook_token_strings, count_seg_placeholders, expand_seg_placeholders,
                     target_string)

__all__ = ['SegCodebook', 'codebook_token_strings', 'expand_seg_placeholders',
           'count_seg_placeholders', 'target_string']
