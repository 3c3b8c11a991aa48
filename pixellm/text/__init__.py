"""The text side shared by models and data pipelines: tokenizers, codebook token strings, chat
templates and the :class:`TextProcessor` that holds them for one model."""
from .chat_templates import (CHAT_TEMPLATES, DEFAULT_CHAT_TEMPLATE, ChatTemplate,
                             encode_conversation, encode_prompt, get_chat_template,
                             register_chat_template, render_conversation)
from .codebook_tokens import (codebook_cfg_tokens, codebook_token_strings,
                              count_seg_placeholders, expand_seg_placeholders, target_string)
from .processor import TextProcessor, build_text_processor
from .tokenizers import (PretrainedTokenizer, TinyTokenizer, build_tokenizer,
                         codebook_tokenizer_cfg, configure_tokenizer)

__all__ = [
    'CHAT_TEMPLATES', 'DEFAULT_CHAT_TEMPLATE', 'ChatTemplate', 'encode_conversation',
    'encode_prompt', 'get_chat_template', 'register_chat_template', 'render_conversation',
    'codebook_cfg_tokens', 'codebook_token_strings', 'count_seg_placeholders',
    'expand_seg_placeholders', 'target_string', 'TextProcessor', 'build_text_processor',
    'PretrainedTokenizer', 'TinyTokenizer', 'build_tokenizer', 'codebook_tokenizer_cfg',
    'configure_tokenizer'
]
