"""Chat templates: a neutral conversation -> the LLM's text, token ids and training labels.

Datasets produce ``[dict(role='user', content='<image>\\nPlease segment ...'),
dict(role='assistant', content='It is [SEG0] [SEG1].'), ...]``; a template (LLaVA's ``vicuna_v1``
or ``llava_llama_2``) turns it into ids where ``<image>`` is one ``IMAGE_TOKEN_INDEX`` and only the
answers (with their turn-ending ``</s>``) are supervised.
"""
import difflib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from pixellm.utils.constants import (DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN,
                                     DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX)

Message = Dict[str, str]
# One rendered piece of a conversation and whether its tokens are supervised.
_Part = Tuple[str, bool]


@dataclass(frozen=True)
class ChatTemplate:
    """How one LLM family writes a conversation.

    The format strings take ``{system}`` and ``{content}``. The rendered text is
    ``prefix + first_user + assistant + user + assistant + ...``; a generation prompt stops after a
    user turn, which therefore ends with the assistant's role tag (``'... ASSISTANT:'``).

    Args:
        name (str): Registry name.
        system (str): System prompt.
        prefix (str): Text before the first user turn.
        first_user (str): The first user turn.
        user (str): Every later user turn.
        assistant (str): One answer with its turn end; all of it is supervised.
        stop_words (tuple[str]): Strings that end generation.
    """
    name: str
    system: str
    prefix: str
    first_user: str
    user: str
    assistant: str
    stop_words: Tuple[str, ...] = ('</s>', )


VICUNA_SYSTEM = ('A chat between a curious human and an artificial intelligence assistant. The '
                 "assistant gives helpful, detailed, and polite answers to the human's questions.")
LLAVA_LLAMA_2_SYSTEM = ('You are a helpful language and vision assistant. You are able to '
                        'understand the visual content that the user provides, and assist the '
                        'user with a variety of tasks using natural language.')

CHAT_TEMPLATES: Dict[str, ChatTemplate] = {}


def register_chat_template(template: ChatTemplate, force: bool = False) -> ChatTemplate:
    """Add ``template`` to :data:`CHAT_TEMPLATES` under ``template.name`` and return it.

    Args:
        template (ChatTemplate): The template.
        force (bool): Replace a template of the same name. Defaults to False.

    Returns:
        ChatTemplate: ``template``.
    """
    if template.name in CHAT_TEMPLATES and not force:
        raise KeyError(f'chat template {template.name!r} is already registered; pass force=True '
                       'to replace it')
    CHAT_TEMPLATES[template.name] = template
    return template


# The template of PixelLM's and LISA's LLaVA checkpoints, and every default in pixellm.
DEFAULT_CHAT_TEMPLATE = 'vicuna_v1'

# LLaVA v1 (SeparatorStyle.TWO, sep ' ', sep2 '</s>'):
# "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>".
register_chat_template(ChatTemplate(
    name=DEFAULT_CHAT_TEMPLATE,
    system=VICUNA_SYSTEM,
    prefix='{system} ',
    first_user='USER: {content} ASSISTANT:',
    user='USER: {content} ASSISTANT:',
    assistant=' {content}</s>'))

# LLaVA's conv_llava_llama_2 (SeparatorStyle.LLAMA_2): the system prompt sits inside the first
# [INST] block and later turns reopen with a literal '<s>'.
register_chat_template(ChatTemplate(
    name='llava_llama_2',
    system=LLAVA_LLAMA_2_SYSTEM,
    prefix='',
    first_user='[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{content} [/INST]',
    user='<s>[INST] {content} [/INST]',
    assistant=' {content} </s>'))


def get_chat_template(template: Union[str, ChatTemplate]) -> ChatTemplate:
    """Return the registered template called ``template``, or ``template`` if it is one already.

    Args:
        template (str | ChatTemplate): Name or template.

    Returns:
        ChatTemplate: The template.
    """
    if isinstance(template, ChatTemplate):
        return template
    if template not in CHAT_TEMPLATES:
        close = difflib.get_close_matches(str(template), CHAT_TEMPLATES, n=3, cutoff=0.4)
        hint = f' Did you mean {", ".join(map(repr, close))}?' if close else ''
        raise KeyError(f'unknown chat template {template!r}; available: '
                       f'{", ".join(sorted(CHAT_TEMPLATES))}.{hint}')
    return CHAT_TEMPLATES[template]


def _check_messages(messages: Sequence[Message], last_role: Optional[str] = None) -> None:
    """Raise ``ValueError`` unless roles alternate user/assistant from a user turn to ``last_role``.

    ``last_role=None`` accepts either role at the end.
    """
    if not messages:
        raise ValueError('conversation has no message')
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {'role', 'content'}:
            raise ValueError(f'message {i} must be dict(role=..., content=...), got {message!r}')
        expected = 'user' if i % 2 == 0 else 'assistant'
        if message.get('role') != expected:
            raise ValueError(f'message {i} has role {message.get("role")!r}, expected '
                             f'{expected!r}: roles alternate user/assistant from a user turn')
        if not isinstance(message.get('content'), str):
            raise ValueError(f'message {i} content must be a str, got '
                             f'{type(message.get("content")).__name__}')
        if expected == 'assistant' and DEFAULT_IMAGE_TOKEN in message['content']:
            raise ValueError(f'message {i} is an answer containing {DEFAULT_IMAGE_TOKEN!r}; only '
                             'user messages may hold the image')
    if last_role is not None and messages[-1]['role'] != last_role:
        raise ValueError(f'the last message must be a {last_role!r} message, got '
                         f'{messages[-1]["role"]!r}')


def _render_parts(messages: Sequence[Message], template: ChatTemplate) -> List[_Part]:
    """Render messages as text parts; adjacent parts of the same supervision are merged."""
    parts: List[_Part] = [(template.prefix.format(system=template.system), False)]
    for i, message in enumerate(messages):
        if message['role'] == 'user':
            fmt = template.first_user if i == 0 else template.user
            parts.append((fmt.format(system=template.system, content=message['content']), False))
        else:
            parts.append((template.assistant.format(content=message['content']), True))
    merged: List[_Part] = []
    for text, supervised in parts:
        if not text:
            continue
        if merged and merged[-1][1] == supervised:
            merged[-1] = (merged[-1][0] + text, supervised)
        else:
            merged.append((text, supervised))
    return merged


def render_conversation(messages: Sequence[Message],
                        template: Union[str, ChatTemplate] = DEFAULT_CHAT_TEMPLATE) -> str:
    """Return the text the LLM sees for ``messages`` (for logs and debugging).

    A conversation ending with a user message renders as a generation prompt (ending with the
    assistant's role tag, e.g. ``'ASSISTANT:'``).

    Args:
        messages (Sequence[dict]): ``dict(role='user'|'assistant', content=str)`` in turn order.
        template (str | ChatTemplate): Template or its name. Defaults to ``'vicuna_v1'``.

    Returns:
        str: The rendered conversation.
    """
    template = get_chat_template(template)
    _check_messages(messages)
    return ''.join(text for text, _ in _render_parts(messages, template))


def _common_prefix_len(a: List[int], b: List[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _encode_chunk(chunk: List[_Part], tokenizer) -> Tuple[List[int], List[bool]]:
    """Tokenize consecutive parts as one text and say which tokens belong to supervised parts.

    The whole text is tokenized at once, so the ids are exactly ``tokenizer(text)``'s. A part
    boundary is located by tokenizing the text up to it: the templates put boundaries before a
    space or at a special token, where the prefix's ids are a prefix of the whole's. Should a
    token straddle a boundary anyway, it goes to the later part.
    """
    text = ''.join(t for t, _ in chunk)
    ids = tokenizer.encode(text, add_special_tokens=False)
    flags: List[bool] = []
    end = 0
    for i, (part, supervised) in enumerate(chunk):
        end += len(part)
        if i == len(chunk) - 1:
            stop = len(ids)
        else:
            prefix_ids = tokenizer.encode(text[:end], add_special_tokens=False)
            stop = max(_common_prefix_len(prefix_ids, ids), len(flags))
        flags.extend([supervised] * (stop - len(flags)))
    return ids, flags


def _image_ids(tokenizer, use_im_start_end: bool) -> List[int]:
    if not use_im_start_end:
        return [IMAGE_TOKEN_INDEX]
    ids = []
    for token in (DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f'use_im_start_end=True but the tokenizer has no {token!r} token; '
                             'build the tokenizer with use_im_start_end=True')
        ids.append(token_id)
    return [ids[0], IMAGE_TOKEN_INDEX, ids[1]]


def _encode_parts(parts: List[_Part], tokenizer,
                  use_im_start_end: bool) -> Tuple[List[int], List[int], int]:
    """Return ids, labels and the end of the last image placeholder (0 when there is none).

    Text is tokenized chunk by chunk between ``<image>`` placeholders (as LLaVA's
    ``tokenizer_image_token`` does), so the ids of a chunk never depend on the image tokens.
    """
    image_ids = _image_ids(tokenizer, use_im_start_end)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids, labels = list(bos), [IGNORE_INDEX] * len(bos)
    image_end = 0
    chunk: List[_Part] = []

    def flush():
        chunk_ids, flags = _encode_chunk(chunk, tokenizer)
        ids.extend(chunk_ids)
        labels.extend(i if f else IGNORE_INDEX for i, f in zip(chunk_ids, flags))
        chunk.clear()

    for text, supervised in parts:
        for k, piece in enumerate(text.split(DEFAULT_IMAGE_TOKEN)):
            if k > 0:
                flush()
                ids.extend(image_ids)
                labels.extend([IGNORE_INDEX] * len(image_ids))
                image_end = len(ids)
            if piece:
                chunk.append((piece, supervised))
    flush()
    return ids, labels, image_end


def _first_supervised(labels: List[int]) -> int:
    return next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)


def encode_conversation(messages: Sequence[Message],
                        tokenizer,
                        template: Union[str, ChatTemplate] = DEFAULT_CHAT_TEMPLATE,
                        max_length: Optional[int] = None,
                        use_im_start_end: bool = False) -> Dict[str, torch.Tensor]:
    """Tokenize a conversation for training: ids with one image placeholder, labels on answers.

    ``input_ids`` start with BOS (when the tokenizer has one); each ``<image>`` in a user message
    becomes one ``IMAGE_TOKEN_INDEX`` (``<im_start>, IMAGE_TOKEN_INDEX, <im_end>`` with
    ``use_im_start_end``). ``labels`` equal ``input_ids`` on every answer with its turn end (the
    space after the role tag, the answer, ``'</s>'``) and are ``IGNORE_INDEX`` elsewhere, so the
    model learns to answer and to stop. Decoding the supervised ids of the tiny tokenizer gives
    ``' ' + answer + '</s>'`` per turn (vicuna_v1).

    Truncation keeps the first ``max_length`` ids, cutting into the last answers (an answer cut
    short loses its ``'</s>'``). It raises ``ValueError`` when the cut would drop an image
    placeholder (the model would get image features with nowhere to go) or every supervised token
    (the loss would be empty); the caller should skip or shorten such a sample.

    Args:
        messages (Sequence[dict]): ``dict(role='user'|'assistant', content=str)``, alternating
            from a user message and ending with an assistant message.
        tokenizer (PreTrainedTokenizerBase): The LLM's tokenizer.
        template (str | ChatTemplate): Template or its name. Defaults to ``'vicuna_v1'``.
        max_length (int, optional): Keep at most this many ids, an image placeholder counting
            as one. None keeps all.
        use_im_start_end (bool): Wrap the image placeholder in ``<im_start>``/``<im_end>``.
            Defaults to False.

    Returns:
        dict: ``input_ids`` and ``labels``, both ``torch.LongTensor`` of shape ``(L,)``.
    """
    template = get_chat_template(template)
    _check_messages(messages, 'assistant')
    ids, labels, image_end = _encode_parts(_render_parts(messages, template), tokenizer,
                                           use_im_start_end)
    if max_length is not None and len(ids) > max_length:
        if max_length < image_end:
            raise ValueError(f'max_length={max_length} would cut the image placeholder, which ends '
                             f'at position {image_end}; raise max_length or shorten the prompt')
        if all(label == IGNORE_INDEX for label in labels[:max_length]):
            raise ValueError(f'max_length={max_length} would leave no supervised token: the first '
                             f'answer starts at position {_first_supervised(labels)} of '
                             f'{len(ids)}; raise max_length or shorten the prompt')
        ids, labels = ids[:max_length], labels[:max_length]
    return dict(input_ids=torch.tensor(ids, dtype=torch.long),
                labels=torch.tensor(labels, dtype=torch.long))


def encode_prompt(messages: Sequence[Message],
                  tokenizer,
                  template: Union[str, ChatTemplate] = DEFAULT_CHAT_TEMPLATE,
                  use_im_start_end: bool = False) -> torch.Tensor:
    """Tokenize a generation prompt: all turns, ending with the assistant's role tag.

    The ids equal the prompt part of :func:`encode_conversation` for the same turns followed by
    an answer, so generation continues exactly where training supervised.

    Args:
        messages (Sequence[dict]): ``dict(role='user'|'assistant', content=str)``, alternating
            from a user message and ending with a user message.
        tokenizer (PreTrainedTokenizerBase): The LLM's tokenizer.
        template (str | ChatTemplate): Template or its name. Defaults to ``'vicuna_v1'``.
        use_im_start_end (bool): Wrap the image placeholder in ``<im_start>``/``<im_end>``.
            Defaults to False.

    Returns:
        torch.LongTensor: Prompt ids of shape ``(L,)``.
    """
    template = get_chat_template(template)
    _check_messages(messages, 'user')
    ids, _, _ = _encode_parts(_render_parts(messages, template), tokenizer, use_im_start_end)
    return torch.tensor(ids, dtype=torch.long)
