"""From a MUSE record to a tokenized conversation: pick a question, write the conversation (the
dataset's map step), expand target placeholders to codebook tokens, tokenize with a chat template.

Question and composed-answer templates are the official ones (``utils/utils.py`` of PixelLM), with
``{seg}`` standing for one target until :class:`ExpandSegTokens` writes the codebook tokens.
"""
import logging
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmcv.transforms import BaseTransform
from mmengine.logging import print_log

from pixellm.datasets.muse_dataset import DatasetFormatError, record_context
from pixellm.registry import TRANSFORMS
from pixellm.text import build_text_processor
from pixellm.utils.constants import DEFAULT_IMAGE_TOKEN, SEG_PLACEHOLDER

# A tokenizing step built outside load_config (which hands out the config's text processor).
MISSING_PROCESSOR = ('{name} needs the model\'s text_processor: set the config\'s top-level '
                     'text_processor key and load the config with pixellm.utils.load_config (as '
                     'the tools do), or pass text_processor=dict(type=\'TextProcessor\', ...)')

# The official LONG_QUESTION_LIST: a MUSE question is a full sentence, the template asks for masks.
LONG_QUESTION_TEMPLATES = (
    '{sent} Please respond with segmentation mask.',
    '{sent} Please output segmentation mask.',
)
# The official EXPAND_LONG_QUESTION_LIST, appended with ``--use_expand_question_list``.
EXPAND_LONG_QUESTION_TEMPLATES = (
    '{sent} Provide the segmentation mask.',
    '{sent} Output the segmentation mask.',
    '{sent} Please show the segmentation mask.',
    "{sent} I'd appreciate segmentation masks.",
    '{sent} Please highlight the segmentation mask.',
)
# The official MR_SINGLE_ANSWER_LIST: one clause per target, "<name> is <target>".
SINGLE_ANSWER_TEMPLATES = ('{class_name} is {seg}.', )
# The official MR_MULTI_ANSWER_LIST: all names, then all targets.
MULTI_ANSWER_TEMPLATES = (
    '{class_name} are {seg}, separately.',
    '{class_name} are {seg}.',
    'Sure, {class_name} are {seg}, separately.',
    'Sure, {class_name} are {seg}.',
    'the segmentation result of {class_name} are {seg}.',
    'the segmentation result of {class_name} are {seg}, separately.',
    'Sure, the segmentation result of {class_name} are {seg}.',
    'Sure, the segmentation result of {class_name} are {seg}, separately.',
)


def join_items(items: Sequence[str]) -> str:
    """Join as the official answers do: ``'a'``, ``'a and b'``, ``'a, b and c'``."""
    items = list(items)
    if len(items) <= 1:
        return ''.join(items)
    return ', '.join(items[:-1]) + ' and ' + items[-1]


def compose_answer(names: Sequence[str], separate: bool, multi_template: str) -> str:
    """Compose an answer with one ``{seg}`` per target from the targets' names (official rule).

    Args:
        names (Sequence[str]): One name per target, in answer order.
        separate (bool): One clause per target (``'red circle is {seg} and cat is {seg}.'``);
            otherwise ``multi_template`` names all targets at once.
        multi_template (str): A :data:`MULTI_ANSWER_TEMPLATES` entry (``{class_name}``, ``{seg}``).

    Returns:
        str: The answer, with ``len(names)`` placeholders.
    """
    if separate:
        single = SINGLE_ANSWER_TEMPLATES[0]
        # The official code drops each clause's final '.' and puts one back after the last.
        clauses = [single.format(class_name=name, seg=SEG_PLACEHOLDER)[:-1] for name in names]
        return join_items(clauses) + '.'
    return multi_template.format(class_name=', '.join(names).lower(),
                                 seg=join_items([SEG_PLACEHOLDER] * len(names)))


@TRANSFORMS.register_module()
class SampleQuestion(BaseTransform):
    """Choose the question of this sample and its targets.

    Training items (no ``question_index``) draw a question uniformly with ``np.random``, which
    mmengine seeds per dataloader worker; test items carry the ``question_index`` that
    ``MUSEDataset(test_mode=True)`` fixed, so evaluation is deterministic.

    Every target of the chosen question is kept, in answer order. That is what the official MUSE
    loader does: its ``num_classes_per_question`` (3 in the seed recipe) is accepted but never
    read by ``MultiReasonSegDataset``; it only matters for the semantic/referring segmentation
    datasets, where ``allocate_class`` spreads up to ``num_classes_per_sample *
    num_classes_per_question`` sampled classes over questions of at most
    ``num_classes_per_question`` each. A MUSE question's targets are fixed by its text (and its
    ``text_answers`` sentence), so dropping some would make the answer wrong.

    Required keys: ``questions``, ``answers``, ``text_answers``. Optional: ``question_index``.
    Added keys: ``question_index``, ``question`` (raw text), ``targets`` (instance dicts),
    ``text_answer`` (str or None), ``num_targets``.
    """

    def transform(self, results: dict) -> dict:
        """Pick the question.

        Args:
            results (dict): Data info from ``MUSEDataset``.

        Returns:
            dict: ``results`` with the chosen question's fields.
        """
        questions = results['questions']
        q = results.get('question_index')
        if q is None:
            q = int(np.random.randint(len(questions)))
        targets = results['answers'][q]
        results['question_index'] = q
        results['question'] = questions[q]
        results['targets'] = targets
        results['text_answer'] = results['text_answers'][q]
        results['num_targets'] = len(targets)
        return results


@TRANSFORMS.register_module()
class BuildMuseConversation(BaseTransform):
    """The dataset's map step: a MUSE question and its answer as a neutral two-turn conversation.

    The user turn is ``'<image>\\n' + template.format(sent=question)`` with a template from the
    official ``LONG_QUESTION_LIST`` (plus ``EXPAND_LONG_QUESTION_LIST`` when
    ``use_expand_question_list``). The assistant turn is the record's text answer; without one it
    is composed as the official loader does: each target is named by its ``rephrased_name`` with
    probability ``rephrased_name_prob`` (when it has one) and by its ``category_name`` otherwise;
    then with equal chance either one clause per target (``'X is {seg}, Y is {seg} and Z is
    {seg}.'``) or one ``MR_MULTI_ANSWER_LIST`` sentence (``'Sure, x, y, z are {seg}, {seg} and
    {seg}.'``).

    With ``deterministic=True`` (use it in test pipelines) the first question template is used and
    a composed answer names each target by ``rephrased_name`` (falling back to
    ``category_name``, as the official validation loader names instances) with one clause per
    target. The official validation loader draws the question template at random even at test
    time; a fixed one makes evaluation reproducible.

    Required keys: ``question``, ``targets``, ``text_answer``.
    Added keys: ``conversation`` (list of ``dict(role, content)``), ``answer`` (with ``{seg}``).

    Args:
        use_expand_question_list (bool): Add the five expanded templates (seed recipe: True).
            Defaults to False.
        rephrased_name_prob (float): Probability of naming a target by its ``rephrased_name`` in
            a composed answer. Defaults to 0.9 (official).
        deterministic (bool): No random choice (test pipelines). Defaults to False.
    """

    def __init__(self, use_expand_question_list: bool = False, rephrased_name_prob: float = 0.9,
                 deterministic: bool = False) -> None:
        if not 0.0 <= rephrased_name_prob <= 1.0:
            raise ValueError(f'rephrased_name_prob must be in [0, 1], got {rephrased_name_prob}')
        self.question_templates: List[str] = list(LONG_QUESTION_TEMPLATES)
        if use_expand_question_list:
            self.question_templates.extend(EXPAND_LONG_QUESTION_TEMPLATES)
        self.use_expand_question_list = use_expand_question_list
        self.rephrased_name_prob = rephrased_name_prob
        self.deterministic = deterministic

    def _choice(self, options: Sequence[str]) -> str:
        return options[0] if self.deterministic else options[np.random.randint(len(options))]

    def _target_name(self, inst: dict) -> str:
        rephrased = inst.get('rephrased_name')
        if rephrased and (self.deterministic or np.random.rand() < self.rephrased_name_prob):
            return rephrased
        return inst['category_name']

    def user_prompt(self, question: str) -> str:
        """The user turn this step writes for ``question`` in evaluation (image placeholder aside).

        :mod:`pixellm.apis` (and so ``tools/chat.py`` and the web demo) asks a user's question in
        this form, so it gets the answer the test metrics measured.

        Args:
            question (str): The question as the user wrote it.

        Returns:
            str: The first question template filled with it.
        """
        return self.question_templates[0].format(sent=question)

    def transform(self, results: dict) -> dict:
        """Write the conversation.

        Args:
            results (dict): Pipeline dict after ``SampleQuestion``.

        Returns:
            dict: ``results`` with ``conversation`` and ``answer``.
        """
        question = self._choice(self.question_templates).format(sent=results['question'])
        answer = results['text_answer']
        if answer is None:
            names = [self._target_name(inst) for inst in results['targets']]
            separate = True if self.deterministic else bool(np.random.randint(2))
            answer = compose_answer(names, separate, self._choice(MULTI_ANSWER_TEMPLATES))
        results['conversation'] = [
            dict(role='user', content=f'{DEFAULT_IMAGE_TOKEN}\n{question}'),
            dict(role='assistant', content=answer),
        ]
        results['answer'] = answer
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(use_expand_question_list='
                f'{self.use_expand_question_list}, rephrased_name_prob='
                f'{self.rephrased_name_prob}, deterministic={self.deterministic})')


@TRANSFORMS.register_module()
class ExpandSegTokens(BaseTransform):
    """Replace each ``{seg}`` in the assistant turns by one target's codebook tokens.

    A target becomes the text processor's ``num_scales * tokens_per_scale`` codebook tokens
    (``[SEG0] ... [SEG5]`` for the seed recipe's 2 scales x 3 tokens). The placeholders must match
    the targets one to one, since the model pairs the k-th target's tokens with the k-th mask.

    Required keys: ``conversation``, and ``gt_masks`` (or ``num_targets`` when masks are not
    decoded). Updated keys: ``conversation``, ``answer``. Added keys: ``codebook_tokens``.

    Args:
        text_processor (dict | TextProcessor): The model's text processor. In a config leave it
            out: ``load_config`` hands every such step the config's ``text_processor``.

    Raises:
        DatasetFormatError: The number of placeholders differs from the number of masks.
    """

    def __init__(self, text_processor=None) -> None:
        if text_processor is None:
            raise ValueError(MISSING_PROCESSOR.format(name=type(self).__name__))
        self.text_processor = build_text_processor(text_processor)
        self.tokens = list(self.text_processor.codebook_tokens)

    def transform(self, results: dict) -> dict:
        """Expand the placeholders.

        Args:
            results (dict): Pipeline dict after ``BuildMuseConversation``.

        Returns:
            dict: ``results`` with expanded ``conversation`` and ``answer``.
        """
        if 'gt_masks' in results:
            expected = len(results['gt_masks'])
        elif 'num_targets' in results:
            expected = results['num_targets']
        else:
            raise KeyError('ExpandSegTokens needs "gt_masks" (DecodeTargetMasks) or '
                           '"num_targets" (SampleQuestion) to check the answer')
        conversation = results['conversation']
        found = sum(self.text_processor.count_targets(m['content']) for m in conversation
                    if m['role'] == 'assistant')
        if found != expected:
            ctx = record_context(results)
            q = results.get('question_index', '?')
            relation = 'more' if found > expected else 'fewer'
            raise DatasetFormatError(
                ctx['file'], f'{ctx["record"]}, question {q}', f'text_answers[{q}]',
                f'{relation} {SEG_PLACEHOLDER} than instances: {found} {SEG_PLACEHOLDER} in the '
                f'answer for {expected} target masks')
        results['conversation'] = [
            dict(m, content=self.text_processor.expand_targets(m['content']))
            if m['role'] == 'assistant' else dict(m) for m in conversation
        ]
        answers = [m['content'] for m in results['conversation'] if m['role'] == 'assistant']
        if answers:
            results['answer'] = answers[-1]
        results['codebook_tokens'] = list(self.tokens)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(text_processor={self.text_processor!r})'


@TRANSFORMS.register_module()
class TokenizeConversation(BaseTransform):
    """Tokenize the conversation with the text processor: ``input_ids``, ``labels``, ``prompt_ids``.

    ``labels`` supervise the answers only (see ``encode_conversation``); ``prompt_ids`` encode the
    conversation without its final answer and end with the assistant's role tag, for generation.
    The tokenizer, chat template and image placeholder are the text processor's, the one the
    model uses, so the codebook tokens get the model's ids.

    Length: ``max_length`` counts ids with the image as one placeholder id; the LLM sees
    ``num_image_tokens - 1`` more positions (the official recipe's 512-token budget with 256 image
    tokens is ``max_length=257``, its ``model_max_length - 255``). A longer conversation is cut to
    ``max_length`` ids only when every codebook token survives (the cut then costs trailing text
    such as the final ``'</s>'``). When the cut would drop a target's codebook tokens the official
    code truncates silently, leaving a mask without its tokens; here it raises
    :class:`DatasetFormatError` naming the record and the question, so the data or ``max_length``
    can be fixed rather than train on a misaligned sample. With ``overflow='skip'`` (training
    recipes over large real data) such a sample is dropped instead: the transform returns None,
    mmengine's dataset draws another index in its place, and a warning names the record.

    Required keys: ``conversation``. Optional: ``codebook_tokens`` (from ``ExpandSegTokens``; a
    conversation without it has no targets to protect and is cut like any text).
    Added keys: ``input_ids``, ``labels``, ``prompt_ids`` (``torch.LongTensor``).

    Args:
        text_processor (dict | TextProcessor): The model's text processor. In a config leave it
            out: ``load_config`` hands every such step the config's ``text_processor``.
        max_length (int, optional): Maximum ids per sample (see above); None for no limit.
            Defaults to 512.
        overflow (str): What a conversation that cannot be cut to ``max_length`` (codebook tokens
            or all supervision would be lost) does: ``'error'`` raises, ``'skip'`` drops the
            sample (returns None; use only in training pipelines, where mmengine refetches).
            Defaults to ``'error'``.

    Raises:
        DatasetFormatError: Truncation would drop codebook tokens (``overflow='error'``).
        ValueError: The tokenizer does not hold a codebook token as one token.
    """

    def __init__(self, text_processor=None, max_length: Optional[int] = 512,
                 overflow: str = 'error') -> None:
        if text_processor is None:
            raise ValueError(MISSING_PROCESSOR.format(name=type(self).__name__))
        if max_length is not None and max_length < 1:
            raise ValueError(f'max_length must be positive or None, got {max_length}')
        if overflow not in ('error', 'skip'):
            raise ValueError(f"overflow must be 'error' or 'skip', got {overflow!r}")
        self.overflow = overflow
        self.text_processor = build_text_processor(text_processor)
        self.max_length = max_length

    def transform(self, results: dict) -> dict:
        """Tokenize.

        Args:
            results (dict): Pipeline dict after ``ExpandSegTokens``.

        Returns:
            dict: ``results`` with ``input_ids``, ``labels`` and ``prompt_ids``.
        """
        conversation = results['conversation']
        processor = self.text_processor
        encoded = processor.encode_conversation(conversation)
        input_ids, labels = encoded['input_ids'], encoded['labels']
        # Checked on every sample, not only when truncating: a tokenizer that splits the codebook
        # tokens trains the wrong ids silently.
        codebook_ids = processor.codebook_token_ids if 'codebook_tokens' in results else []
        if self.max_length is not None and len(input_ids) > self.max_length:
            try:
                input_ids, labels = self._cut(results, conversation, input_ids, codebook_ids)
            except (DatasetFormatError, ValueError) as err:
                if self.overflow == 'error':
                    raise
                print_log(f'TokenizeConversation: skipped a sample that does not fit '
                          f'max_length={self.max_length}: {err}', logger='current',
                          level=logging.WARNING)
                return None
        results['input_ids'] = input_ids
        results['labels'] = labels
        results['prompt_ids'] = processor.encode_prompt(conversation[:-1])
        return results

    def _cut(self, results: dict, conversation, input_ids: torch.Tensor,
             codebook_ids: List[int]):
        lost = int(torch.isin(input_ids[self.max_length:],
                              torch.tensor(codebook_ids, dtype=torch.long)).sum())
        if lost:
            ctx = record_context(results)
            q = results.get('question_index', '?')
            raise DatasetFormatError(
                ctx['file'], f'{ctx["record"]}, question {q}', 'conversation',
                f'the conversation has {len(input_ids)} ids; cutting it to max_length='
                f'{self.max_length} would drop {lost} codebook token(s) of its targets; '
                'raise max_length or shorten the question/answer')
        # encode_conversation checks that the image and some supervision survive the cut.
        encoded = self.text_processor.encode_conversation(conversation,
                                                          max_length=self.max_length)
        return encoded['input_ids'], encoded['labels']

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(text_processor={self.text_processor!r}, '
                f'max_length={self.max_length}, overflow={self.overflow!r})')
