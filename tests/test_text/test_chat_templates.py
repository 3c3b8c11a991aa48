"""Tests of the chat templates: rendered text, image placeholder, label masking and truncation."""
import pytest
import torch

from pixellm.text.chat_templates import (CHAT_TEMPLATES, VICUNA_SYSTEM, ChatTemplate,
                                             encode_conversation, encode_prompt,
                                             get_chat_template, register_chat_template,
                                             render_conversation)
from pixellm.text.tokenizers import TinyTokenizer
from pixellm.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

SEG_TOKENS = ['[SEG0]', '[SEG1]']
QUESTION = '<image>\nPlease segment the red circle.'
ANSWER = 'Sure, it is [SEG0] [SEG1].'
FOLLOW_UP = 'What about the star on the left?'
ANSWER_2 = 'It is [SEG0] [SEG1] .'


def user(content):
    return dict(role='user', content=content)


def assistant(content):
    return dict(role='assistant', content=content)


ONE_TURN = [user(QUESTION), assistant(ANSWER)]
TWO_TURNS = [user(QUESTION), assistant(ANSWER), user(FOLLOW_UP), assistant(ANSWER_2)]


@pytest.fixture(scope='module')
def tokenizer():
    return TinyTokenizer(extra_tokens=SEG_TOKENS)


@pytest.fixture(scope='module')
def im_tokenizer():
    return TinyTokenizer(extra_tokens=SEG_TOKENS, use_im_start_end=True)


def supervised_runs(labels):
    """Return the label ids of each maximal run of supervised positions."""
    runs, current = [], []
    for label in labels.tolist():
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    if current:
        runs.append(current)
    return runs


def test_vicuna_v1_renders_llava_v1_text():
    expected = (f'{VICUNA_SYSTEM} USER: {QUESTION} ASSISTANT: {ANSWER}</s>'
                f'USER: {FOLLOW_UP} ASSISTANT: {ANSWER_2}</s>')
    assert render_conversation(TWO_TURNS, 'vicuna_v1') == expected
    assert VICUNA_SYSTEM.startswith('A chat between a curious human')
    prompt = render_conversation(TWO_TURNS[:3], 'vicuna_v1')
    assert prompt == (f'{VICUNA_SYSTEM} USER: {QUESTION} ASSISTANT: {ANSWER}</s>'
                      f'USER: {FOLLOW_UP} ASSISTANT:')


def test_llava_llama_2_renders_inst_format():
    expected = (
        '[INST] <<SYS>>\n'
        'You are a helpful language and vision assistant. You are able to understand the visual '
        'content that the user provides, and assist the user with a variety of tasks using '
        'natural language.\n'
        '<</SYS>>\n\n'
        '<image>\nPlease segment the red circle. [/INST] Sure, it is [SEG0] [SEG1]. </s>'
        '<s>[INST] What about the star on the left? [/INST] It is [SEG0] [SEG1] . </s>')
    assert render_conversation(TWO_TURNS, 'llava_llama_2') == expected
    prompt = render_conversation(TWO_TURNS[:3], 'llava_llama_2')
    assert prompt == expected[:expected.index('[/INST] It is')] + '[/INST]'


@pytest.mark.parametrize('template,turn_end', [('vicuna_v1', '</s>'), ('llava_llama_2', ' </s>')])
def test_labels_supervise_exactly_each_answer_and_its_turn_end(tokenizer, template, turn_end):
    out = encode_conversation(TWO_TURNS, tokenizer, template)
    input_ids, labels = out['input_ids'], out['labels']
    assert input_ids.dtype == torch.long and labels.dtype == torch.long
    assert input_ids.shape == labels.shape and input_ids.ndim == 1
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], input_ids[supervised])
    runs = supervised_runs(labels)
    assert [tokenizer.decode(run) for run in runs] == [
        ' ' + ANSWER + turn_end, ' ' + ANSWER_2 + turn_end]
    # Every answer ends on EOS, so the model learns to stop after each turn.
    assert all(run[-1] == tokenizer.eos_token_id for run in runs)
    assert input_ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX


@pytest.mark.parametrize('template', sorted(CHAT_TEMPLATES))
def test_image_becomes_one_placeholder_where_it_was_written(tokenizer, template):
    out = encode_conversation(ONE_TURN, tokenizer, template)
    input_ids = out['input_ids'].tolist()
    assert input_ids.count(IMAGE_TOKEN_INDEX) == 1
    pos = input_ids.index(IMAGE_TOKEN_INDEX)
    before = render_conversation(ONE_TURN, template).split('<image>')[0]
    assert input_ids[:pos] == [1] + tokenizer.encode(before, add_special_tokens=False)
    assert out['labels'][pos] == IGNORE_INDEX


def test_image_with_im_start_end_is_wrapped(im_tokenizer):
    out = encode_conversation(ONE_TURN, im_tokenizer, 'vicuna_v1', use_im_start_end=True)
    ids = out['input_ids'].tolist()
    start, end = im_tokenizer.convert_tokens_to_ids(['<im_start>', '<im_end>'])
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    pos = ids.index(IMAGE_TOKEN_INDEX)
    assert ids[pos - 1:pos + 2] == [start, IMAGE_TOKEN_INDEX, end]
    assert ids.count(start) == 1 and ids.count(end) == 1


def test_im_start_end_needs_the_tokens_in_the_tokenizer(tokenizer):
    with pytest.raises(ValueError, match='use_im_start_end=True'):
        encode_conversation(ONE_TURN, tokenizer, use_im_start_end=True)


@pytest.mark.parametrize('template', sorted(CHAT_TEMPLATES))
def test_ids_equal_tokenizing_the_rendered_text_without_image(tokenizer, template):
    messages = [user('Which shape is the largest?'), assistant('The blue square.'),
                user('And the smallest?'), assistant('The red dot [SEG0].')]
    out = encode_conversation(messages, tokenizer, template)
    assert out['input_ids'].tolist() == tokenizer(render_conversation(messages, template)).input_ids


@pytest.mark.parametrize('template', sorted(CHAT_TEMPLATES))
def test_prompt_is_the_prefix_training_continues(tokenizer, template):
    conversation = encode_conversation(TWO_TURNS, tokenizer, template)
    for n_turns in (1, 3):
        prompt = encode_prompt(TWO_TURNS[:n_turns], tokenizer, template)
        assert prompt.dtype == torch.long
        assert torch.equal(conversation['input_ids'][:len(prompt)], prompt)
        # The token right after the prompt is the first supervised one of that answer.
        assert conversation['labels'][len(prompt) - 1] == IGNORE_INDEX
        assert conversation['labels'][len(prompt)] != IGNORE_INDEX


def test_prompt_ends_with_assistant_role_tag(tokenizer):
    prompt = encode_prompt([user(QUESTION)], tokenizer, 'vicuna_v1')
    text_ids = prompt[prompt != IMAGE_TOKEN_INDEX].tolist()
    assert tokenizer.decode(text_ids).endswith('USER: \nPlease segment the red circle. ASSISTANT:')


def test_truncation_keeps_the_first_ids(tokenizer):
    full = encode_conversation(TWO_TURNS, tokenizer)
    first_answer_end = (full['labels'] == tokenizer.eos_token_id).nonzero()[0].item() + 1
    max_length = first_answer_end + 3
    out = encode_conversation(TWO_TURNS, tokenizer, max_length=max_length)
    assert len(out['input_ids']) == max_length
    assert torch.equal(out['input_ids'], full['input_ids'][:max_length])
    assert torch.equal(out['labels'], full['labels'][:max_length])
    same = encode_conversation(TWO_TURNS, tokenizer, max_length=len(full['input_ids']))
    assert torch.equal(same['input_ids'], full['input_ids'])


def test_truncation_never_cuts_the_image(tokenizer, im_tokenizer):
    ids = encode_conversation(ONE_TURN, tokenizer)['input_ids'].tolist()
    pos = ids.index(IMAGE_TOKEN_INDEX)
    with pytest.raises(ValueError, match='image placeholder'):
        encode_conversation(ONE_TURN, tokenizer, max_length=pos)
    # With <im_start>/<im_end> the three ids stay together: cutting after -200 is refused too.
    wrapped = encode_conversation(ONE_TURN, im_tokenizer, use_im_start_end=True)['input_ids']
    pos = wrapped.tolist().index(IMAGE_TOKEN_INDEX)
    with pytest.raises(ValueError, match='image placeholder'):
        encode_conversation(ONE_TURN, im_tokenizer, max_length=pos + 1, use_im_start_end=True)
    kept = encode_conversation(TWO_TURNS, im_tokenizer, use_im_start_end=True,
                               max_length=len(wrapped) - 1)
    assert kept['input_ids'].tolist()[pos - 1:pos + 2][1] == IMAGE_TOKEN_INDEX


def test_truncation_that_leaves_no_answer_is_refused(tokenizer):
    out = encode_conversation(ONE_TURN, tokenizer)
    first = (out['labels'] != IGNORE_INDEX).nonzero()[0].item()
    with pytest.raises(ValueError, match='no supervised token'):
        encode_conversation(ONE_TURN, tokenizer, max_length=first)
    assert (encode_conversation(ONE_TURN, tokenizer, max_length=first + 1)['labels']
            != IGNORE_INDEX).sum() == 1


def test_token_straddling_a_boundary_goes_to_the_answer(tokenizer):
    # The prompt ends with a space that byte-level BPE merges into the answer's first word.
    template = ChatTemplate(name='trailing_space', system='', prefix='',
                            first_user='Q: {content} A: ', user='Q: {content} A: ',
                            assistant='{content}</s>')
    messages = [user('Which shape?'), assistant('Sure, a circle.')]
    answer_ids = tokenizer.encode(' Sure, a circle.</s>', add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(answer_ids[0]) == '\u0120Sure'  # really straddles
    out = encode_conversation(messages, tokenizer, template)
    full_text = 'Q: Which shape? A: Sure, a circle.</s>'
    assert out['input_ids'].tolist() == tokenizer(full_text).input_ids
    assert supervised_runs(out['labels']) == [answer_ids]


def test_unknown_template_lists_available_names():
    with pytest.raises(KeyError) as info:
        get_chat_template('vicuna')
    message = str(info.value)
    assert 'llava_llama_2' in message and 'vicuna_v1' in message
    assert "Did you mean 'vicuna_v1'" in message


def test_get_and_register_templates():
    template = get_chat_template('vicuna_v1')
    assert get_chat_template(template) is template
    with pytest.raises(KeyError, match='already registered'):
        register_chat_template(template)
    custom = ChatTemplate(name='_test_plain', system='', prefix='', first_user='{content}\n',
                          user='{content}\n', assistant='{content}</s>')
    try:
        register_chat_template(custom)
        assert render_conversation([user('q'), assistant('a')], '_test_plain') == 'q\na</s>'
    finally:
        CHAT_TEMPLATES.pop('_test_plain', None)


@pytest.mark.parametrize('messages,match', [
    ([], 'no message'),
    ([assistant('a')], "role 'assistant', expected 'user'"),
    ([user('q'), user('q')], "role 'user', expected 'assistant'"),
    ([user('q'), dict(role='assistant', content=3)], 'content must be a str'),
    ([user('q'), assistant('look: <image>')], 'only user messages'),
    ([user('q')], "last message must be a 'assistant'"),
])
def test_encode_conversation_rejects_malformed_messages(tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        encode_conversation(messages, tokenizer)


def test_encode_prompt_needs_a_final_user_message(tokenizer):
    with pytest.raises(ValueError, match="last message must be a 'user'"):
        encode_prompt(ONE_TURN, tokenizer)
