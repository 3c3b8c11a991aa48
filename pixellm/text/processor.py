"""The text processor: one object that holds everything that turns words into a model's ids.

A model and its data pipelines must agree on the tokenizer, the ids of the codebook tokens, the
chat template and how the image placeholder is written; a mismatch trains or scores the wrong ids
without an error. So a config states them once, under its top-level ``text_processor`` key, and
:func:`pixellm.utils.config.load_config` hands that one config to the model and to every pipeline
step that takes a ``text_processor``; :func:`build_text_processor` builds it once per process.
"""
import json
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from transformers import PreTrainedTokenizerBase

from pixellm.registry import TEXT_PROCESSORS
from pixellm.utils.constants import DEFAULT_IMAGE_TOKEN, SEG_PLACEHOLDER
from .chat_templates import (DEFAULT_CHAT_TEMPLATE, ChatTemplate, encode_conversation,
                             encode_prompt, get_chat_template)
from .codebook_tokens import (codebook_cfg_tokens, count_seg_placeholders,
                              expand_seg_placeholders, target_string)
from .tokenizers import build_tokenizer, codebook_tokenizer_cfg

Message = Dict[str, str]


@TEXT_PROCESSORS.register_module()
class TextProcessor:
    """Tokenizer, codebook tokens, chat template and image placeholder of one model.

    The tokenizer is built from its config with the codebook's tokens added (then
    ``<im_start>``/``<im_end>`` with ``use_im_start_end``: the official order, so the ids match
    the released checkpoints). The model builds its codebook module from ``codebook`` and reads
    the token ids from here; the pipelines write targets as :attr:`codebook_tokens`, tokenize
    with :meth:`encode_conversation` and write generation prompts with :meth:`encode_prompt`;
    ``pixellm.apis`` (chat, web demo) prompts through the same methods. Changing the codebook or
    the template in the config's ``text_processor`` therefore changes all of them.

    Example::

        text_processor = dict(
            type='TextProcessor',
            tokenizer=dict(type='PretrainedTokenizer', name_or_path='LLaVA-Lightning-7B-v1-1'),
            codebook=dict(type='SegCodebook', num_scales=2, tokens_per_scale=3),
            chat_template='vicuna_v1', use_im_start_end=True)

    Args:
        tokenizer (dict | PreTrainedTokenizerBase): Tokenizer config (``TinyTokenizer``,
            ``PretrainedTokenizer``, a plugin's) or a built tokenizer, which is used as it is
            (it must already hold the codebook tokens). Defaults to the shipped tiny tokenizer.
        codebook (dict): The model's codebook config, ``dict(type='SegCodebook', num_scales=...,
            tokens_per_scale=..., token_format=...)``; a target is written as its
            ``num_scales * tokens_per_scale`` tokens. Defaults to 2 scales x 3 tokens.
        chat_template (str | ChatTemplate): Registered template name (``'vicuna_v1'``,
            ``'llava_llama_2'``) or a template. Defaults to ``'vicuna_v1'``.
        use_im_start_end (bool): Write the image as ``<im_start><image><im_end>``; the tokenizer
            gets the two tokens. Defaults to False.
    """

    def __init__(self,
                 tokenizer: Union[Dict, PreTrainedTokenizerBase, None] = None,
                 codebook: Optional[Dict] = None,
                 chat_template: Union[str, ChatTemplate] = DEFAULT_CHAT_TEMPLATE,
                 use_im_start_end: bool = False) -> None:
        tokenizer = dict(type='TinyTokenizer') if tokenizer is None else tokenizer
        self.codebook_cfg: Dict = dict(codebook if codebook is not None
                                       else dict(type='SegCodebook'))
        self.codebook_tokens: List[str] = codebook_cfg_tokens(self.codebook_cfg)
        self.chat_template: ChatTemplate = get_chat_template(chat_template)
        self.use_im_start_end = bool(use_im_start_end)
        if isinstance(tokenizer, dict):
            tokenizer = codebook_tokenizer_cfg(tokenizer, self.codebook_tokens,
                                               self.use_im_start_end)
        elif not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError('TextProcessor: tokenizer must be a config dict with a type or a '
                            f'transformers tokenizer, got {type(tokenizer).__name__}')
        self.tokenizer_cfg = tokenizer
        self._tokenizer: Optional[PreTrainedTokenizerBase] = None
        self._codebook_ids: Optional[List[int]] = None

    # ------------------------------------------------------------------ tokens
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, built on first use."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self.tokenizer_cfg)
        return self._tokenizer

    @property
    def codebook_token_ids(self) -> List[int]:
        """Ids of :attr:`codebook_tokens`, in order.

        Raises:
            ValueError: The tokenizer does not hold a codebook token as one token.
        """
        if self._codebook_ids is None:
            ids = []
            for token in self.codebook_tokens:
                encoded = self.tokenizer.encode(token, add_special_tokens=False)
                if len(encoded) != 1:
                    raise ValueError(
                        f'the tokenizer splits codebook token {token!r} into {len(encoded)} ids; '
                        'give TextProcessor a tokenizer config (it adds the codebook tokens) or '
                        'a tokenizer that already holds them')
                ids.append(encoded[0])
            self._codebook_ids = ids
        return list(self._codebook_ids)

    @property
    def target_text(self) -> str:
        """How one target is written in an answer: the codebook tokens joined by spaces."""
        return target_string(self.codebook_tokens)

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def __len__(self) -> int:
        """Vocabulary size including the added tokens."""
        return len(self.tokenizer)

    # ------------------------------------------------------------------ text
    def expand_targets(self, text: str, placeholder: str = SEG_PLACEHOLDER) -> str:
        """Write every target placeholder of ``text`` (``'{seg}'``) as the codebook tokens.

        Args:
            text (str): An answer with one placeholder per target.
            placeholder (str): The placeholder the datasets write. Defaults to ``'{seg}'``.

        Returns:
            str: The answer as the LLM is trained to write it.
        """
        return expand_seg_placeholders(text, self.codebook_tokens, placeholder)

    @staticmethod
    def count_targets(text: str, placeholder: str = SEG_PLACEHOLDER) -> int:
        """Number of target placeholders in ``text``."""
        return count_seg_placeholders(text, placeholder)

    @staticmethod
    def image_turn(question: str) -> str:
        """The first user turn about an image: the image placeholder, a newline, the question.

        Every dataset and ``pixellm.apis`` open a conversation this way (LLaVA v1's layout);
        :meth:`encode_conversation` writes the placeholder as the image's place in the ids.
        """
        return f'{DEFAULT_IMAGE_TOKEN}\n{question}'

    def encode_conversation(self, messages: Sequence[Message],
                            max_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Training ids and labels of a conversation (see :func:`encode_conversation`).

        The image placeholder becomes one ``IMAGE_TOKEN_INDEX`` (between ``<im_start>`` and
        ``<im_end>`` with ``use_im_start_end``); the model puts its image tokens there.

        Args:
            messages (Sequence[dict]): ``dict(role, content)`` turns ending with an answer.
            max_length (int, optional): Keep at most this many ids. None keeps all.

        Returns:
            dict: ``input_ids`` and ``labels``, ``(L,)`` long tensors.
        """
        return encode_conversation(messages, self.tokenizer, self.chat_template,
                                   max_length=max_length, use_im_start_end=self.use_im_start_end)

    def encode_prompt(self, messages: Sequence[Message]) -> torch.Tensor:
        """Generation prompt ids: the turns up to the assistant's role tag.

        Args:
            messages (Sequence[dict]): ``dict(role, content)`` turns ending with a question.

        Returns:
            torch.LongTensor: ``(L,)`` ids.
        """
        return encode_prompt(messages, self.tokenizer, self.chat_template,
                             use_im_start_end=self.use_im_start_end)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids (codebook tokens kept), stripped."""
        return self.tokenizer.decode(list(ids)).strip()

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> Dict[str, Any]:
        # Dataloader workers rebuild a configured tokenizer instead of unpickling a built one.
        state = dict(self.__dict__)
        if isinstance(self.tokenizer_cfg, dict):
            state['_tokenizer'] = None
            state['_codebook_ids'] = None
        return state

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(tokenizer={self.tokenizer_cfg!r}, codebook='
                f'{self.codebook_cfg!r}, chat_template={self.chat_template.name!r}, '
                f'use_im_start_end={self.use_im_start_end})')


_BUILT: Dict[str, Any] = {}


def _cache_key(cfg: Dict) -> Optional[str]:
    try:
        return json.dumps(cfg, sort_keys=True)
    except TypeError:  # holds an object (a built tokenizer): not shareable by value
        return None


def build_text_processor(cfg: Union[Dict, TextProcessor]) -> TextProcessor:
    """Build a text processor from its config, once per process and config.

    The model and each pipeline step call this with the same config (the config's
    ``text_processor``, handed out by :func:`pixellm.utils.config.load_config`) and get the same
    object, so the tokenizer is loaded once.

    Args:
        cfg (dict | TextProcessor): ``dict(type='TextProcessor', ...)`` or a built processor
            (returned as it is).

    Returns:
        TextProcessor: The processor.
    """
    if not isinstance(cfg, dict):
        if not hasattr(cfg, 'encode_conversation'):
            raise TypeError('text_processor must be a config dict with a type or a built '
                            f'TextProcessor, got {type(cfg).__name__}')
        return cfg
    if 'type' not in cfg:
        raise ValueError(f'text_processor config {dict(cfg)!r} has no type; write '
                         "dict(type='TextProcessor', tokenizer=..., codebook=..., "
                         'chat_template=...)')
    plain = plain_config(cfg)
    key = _cache_key(plain)
    if key is not None and key in _BUILT:
        return _BUILT[key]
    processor = TEXT_PROCESSORS.build(plain)
    if key is not None:
        _BUILT[key] = processor
    return processor


def plain_config(value: Any) -> Any:
    """A config with ConfigDicts and tuples as plain dicts and lists (comparable, a cache key)."""
    if isinstance(value, dict):
        return {k: plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    return value
