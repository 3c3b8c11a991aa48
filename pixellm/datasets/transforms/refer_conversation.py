"""Referring and reasoning segmentation conversations (refCOCO family, gRefCOCO, ReasonSeg): draw
the phrases of one question, choose an explanatory answer, word question and answer with the
official short templates (``utils/utils.py`` of PixelLM).

Placed like the MUSE transforms: ``SampleReferPhrases`` (or ``SampleQuestion``), then
``ChooseExplanatoryAnswer`` for ReasonSeg, ``DecodeTargetMasks``, ``BuildReferConversation``,
``ExpandSegTokens``. ``{seg}`` stands for one target until ``ExpandSegTokens``.
"""
from typing import List, Optional, Sequence

import numpy as np
from mmcv.transforms import BaseTransform

from pixellm.datasets.muse_dataset import record_context
from pixellm.datasets.transforms.conversation import (EXPAND_LONG_QUESTION_TEMPLATES,
                                                      LONG_QUESTION_TEMPLATES,
                                                      MULTI_ANSWER_TEMPLATES, join_items)
from pixellm.registry import TRANSFORMS
from pixellm.utils.constants import DEFAULT_IMAGE_TOKEN, SEG_PLACEHOLDER

# The official SHORT_QUESTION_LIST: the phrase names the targets.
SHORT_QUESTION_TEMPLATES = (
    'Can you segment the {class_name} in this image?',
    'Please segment the {class_name} in this image.',
    'What is {class_name} in this image? Please respond with segmentation mask.',
    'What is {class_name} in this image? Please output segmentation mask.',
)
# The official EXPAND_QUESTION_LIST, added with ``use_expand_question_list`` ("asegment" is the
# official text).
EXPAND_SHORT_QUESTION_TEMPLATES = (
    'Could you identify the {class_name} in this picture?',
    'Are you able to delineate the {class_name} in the image?',
    'Can you pinpoint the {class_name} in this photo?',
    'Is it possible for you to highlight the {class_name} in this image?',
    'Can you discern the {class_name} in the given picture?',
    'Can you provide me with asegment of the {class_name}?',
    'Please perform image segmentation to isolate the {class_name} in this image.',
    'Help me segment the {class_name}.',
    'Would you be willing to segment the {class_name}?',
    'Can you identify {class_name} in this picture? Please provide a segmentation mask.',
    'Could you point out {class_name} in this image and show it with a segmentation mask?',
    "In this image, where is {class_name}? I'd appreciate a segmentation mask.",
    'Please highlight {class_name} in this image using a segmentation mask.',
    'In the picture provided, can you show where {class_name} is with a segmentation mask?',
)
# The official validation question: refCOCO's "What is {sent} in this image?" form and
# ReasonSeg's "{sent} Please output segmentation mask.".
TEST_SHORT_QUESTION = SHORT_QUESTION_TEMPLATES[3]
TEST_LONG_QUESTION = LONG_QUESTION_TEMPLATES[1]
# The official EXPLANATORY_QUESTION_LIST, appended to a ReasonSeg question whose answer explains.
EXPLANATORY_QUESTION_TEMPLATES = (
    'Please output segmentation mask and explain why.',
    'Please output segmentation mask and explain the reason.',
    'Please output segmentation mask and give some explanation.',
)
# The official ANSWER_LIST: one phrase, one target.
ONE_TARGET_ANSWER_TEMPLATES = (
    'It is {seg}.',
    'Sure, {seg}.',
    'Sure, it is {seg}.',
    'Sure, the segmentation result is {seg}.',
    '{seg}.',
)
# The official SINGLE_ANSWER_LIST: one clause per phrase when a question has several.
PHRASE_ANSWER_TEMPLATES = (
    '{class_name} is {seg}.',
    'The segmentation result of {class_name} is {seg}.',
    '{seg}.',
)
# The official MULTI_ANSWER_LIST: MUSE's list and three forms that do not repeat the phrases.
REFER_MULTI_ANSWER_TEMPLATES = MULTI_ANSWER_TEMPLATES + (
    'Sure, they are {seg}.',
    'They are {seg}.',
    '{seg}.',
)
# Ours: the official loader has no zero-target answer (gRefCOCO's no-target expressions get one
# empty mask there). The first is a whole answer, the second a clause among several phrases.
NO_TARGET_ANSWER = 'Sorry, there is no such object in this image.'
NO_TARGET_CLAUSE = '{class_name} is not in this image'
ANSWER_MODES = ('seg', 'seg_explain', 'explain')


def _segs(num: int) -> str:
    return join_items([SEG_PLACEHOLDER] * num)


@TRANSFORMS.register_module()
class SampleReferPhrases(BaseTransform):
    """Draw the referring phrases of one question, as the official refer-seg loader does.

    The official loader draws up to ``num_classes_per_sample * num_classes_per_question`` of an
    image's sentences, spreads them over up to ``num_classes_per_sample`` questions (every
    question gets one, the rest go to random questions that hold fewer than
    ``num_classes_per_question``) and makes one conversation per question. A data sample here
    holds one conversation, so the spread is simulated and one of its questions is kept at
    random; its phrases are a uniform draw of that many sentences, which is the same
    distribution. Two sentences of one object may share a question, as officially.

    Test items (with ``question_index`` from ``test_mode=True``) keep that one sentence.

    Required keys: ``questions``, ``answers``. Optional: ``question_index``, ``text_answers``.
    Added keys: ``question_indices`` (list), ``question_index`` (the first), ``phrases``,
    ``phrase_targets`` (per phrase its targets), ``question`` (the phrases joined as
    ``'a, b and c'``), ``targets`` (all phrases' targets in order), ``text_answer`` (the
    record's when one phrase is drawn, else None), ``num_targets``.

    Args:
        num_classes_per_question (int): Most phrases per question. Defaults to 3 (the seed
            recipe's ``--num_classes_per_question=3``; the official default is 1).
        num_classes_per_sample (int): Questions the official loader makes per image.
            Defaults to 3 (official).
    """

    def __init__(self, num_classes_per_question: int = 3, num_classes_per_sample: int = 3) -> None:
        if num_classes_per_question < 1 or num_classes_per_sample < 1:
            raise ValueError(f'num_classes_per_question and num_classes_per_sample must be '
                             f'positive, got {num_classes_per_question} and '
                             f'{num_classes_per_sample}')
        self.num_classes_per_question = num_classes_per_question
        self.num_classes_per_sample = num_classes_per_sample

    def _draw_count(self, num_sentences: int) -> int:
        """How many phrases the kept question has, by the official allocation."""
        drawn = min(num_sentences, self.num_classes_per_question * self.num_classes_per_sample)
        counts = np.zeros(min(self.num_classes_per_sample, drawn), dtype=np.int64)
        for _ in range(drawn):
            empty = np.flatnonzero(counts == 0)
            free = empty if len(empty) else np.flatnonzero(counts < self.num_classes_per_question)
            counts[np.random.choice(free)] += 1
        return int(counts[np.random.randint(len(counts))])

    def transform(self, results: dict) -> dict:
        """Draw the phrases.

        Args:
            results (dict): Data info of a referring dataset.

        Returns:
            dict: ``results`` with the question's phrases and targets.
        """
        questions = results['questions']
        if results.get('question_index') is not None:
            indices = [int(results['question_index'])]
        else:
            count = self._draw_count(len(questions))
            indices = [int(i) for i in np.random.choice(len(questions), count, replace=False)]
        phrases = [questions[i] for i in indices]
        groups = [list(results['answers'][i]) for i in indices]
        text_answers = results.get('text_answers') or [None] * len(questions)
        results['question_indices'] = indices
        results['question_index'] = indices[0]
        results['phrases'] = phrases
        results['phrase_targets'] = groups
        results['question'] = join_items([p.strip() for p in phrases])
        results['targets'] = [inst for group in groups for inst in group]
        results['text_answer'] = text_answers[indices[0]] if len(indices) == 1 else None
        results['num_targets'] = len(results['targets'])
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_classes_per_question='
                f'{self.num_classes_per_question}, num_classes_per_sample='
                f'{self.num_classes_per_sample})')


@TRANSFORMS.register_module()
class ChooseExplanatoryAnswer(BaseTransform):
    """Choose how a ReasonSeg answer uses the image's explanation (official ``--explanatory``).

    For an image with an ``explanation`` and ``explanatory >= 0``, as the official
    ``ReasonSegDataset``: with probability ``explanatory`` the answer is the explanation alone
    and the sample has no target (``'explain'``: ``targets`` emptied, so ``DecodeTargetMasks``
    gives no mask); otherwise, with equal chance, the answer is the usual ``{seg}`` answer
    (``'seg'``) or that answer followed by the explanation, the question asking for one
    (``'seg_explain'``). An answer therefore contains the explanation with probability
    ``explanatory + (1 - explanatory) / 2``. Images without an explanation, and
    ``explanatory < 0`` (the official ``-1``), always get ``'seg'``.

    Place it after the question is drawn and before ``DecodeTargetMasks``.

    Required keys: ``targets`` (from ``SampleQuestion``). Optional: ``explanation``.
    Added keys: ``answer_mode``. Updated keys (``'explain'`` only): ``targets``,
    ``phrase_targets``, ``num_targets``.

    Args:
        explanatory (float): Probability of the explanation-only answer; negative disables
            explanations. Defaults to 0.1 (official).

    Raises:
        RuntimeError: Masks were decoded already (the transform comes too late).
    """

    def __init__(self, explanatory: float = 0.1) -> None:
        if explanatory > 1:
            raise ValueError(f'explanatory must be at most 1 (negative to disable), got '
                             f'{explanatory}')
        self.explanatory = explanatory

    def transform(self, results: dict) -> dict:
        """Choose the answer mode.

        Args:
            results (dict): Pipeline dict after the question is drawn.

        Returns:
            dict: ``results`` with ``answer_mode``.
        """
        if 'gt_masks' in results:
            raise RuntimeError('ChooseExplanatoryAnswer must come before DecodeTargetMasks: an '
                               'explanation-only answer has no target mask')
        mode = 'seg'
        if self.explanatory >= 0 and results.get('explanation'):
            if np.random.rand() < self.explanatory:
                mode = 'explain'
            elif np.random.randint(2):
                mode = 'seg_explain'
        if mode == 'explain':
            results['targets'] = []
            if 'phrase_targets' in results:
                results['phrase_targets'] = [[] for _ in results['phrase_targets']]
            results['num_targets'] = 0
        results['answer_mode'] = mode
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(explanatory={self.explanatory})'


@TRANSFORMS.register_module()
class BuildReferConversation(BaseTransform):
    """The map step of referring and reasoning data: a question and its answer as a conversation.

    Question (training): the phrases joined (``'a, b and c'``) in a random official short
    template (``SHORT_QUESTION_LIST``, plus ``EXPAND_QUESTION_LIST`` with
    ``use_expand_question_list``), lowercased, e.g. ``'Can you segment the man on left in this
    image?'``; a ReasonSeg full-sentence question (``is_sentence``) goes into a long template
    (``'{sent} Please output segmentation mask.'``) unchanged.

    Answer (training), as the official refer-seg loader composes it when every phrase has one
    target: one phrase, an ``ANSWER_LIST`` form (``'Sure, it is {seg}.'``); several phrases,
    with equal chance one ``SINGLE_ANSWER_LIST`` clause per phrase (``'man on left is {seg} and
    dog is {seg}.'``) or one ``MULTI_ANSWER_LIST`` sentence (``'Sure, man on left and dog are
    {seg} and {seg}.'``). gRefCOCO phrases with several targets or none (``merge_targets=False``)
    are ours: one phrase with ``k > 1`` targets takes a ``MULTI_ANSWER_LIST`` sentence with
    ``k`` placeholders; a phrase without targets is answered :data:`NO_TARGET_ANSWER`
    (``'Sorry, there is no such object in this image.'``); among several phrases each gets a
    clause (``'x is {seg}'``, ``'x are {seg} and {seg}'``, ``'x is not in this image'``).
    A record's own ``text_answer`` is used as it is.

    ReasonSeg explanations (``answer_mode`` from ``ChooseExplanatoryAnswer``): ``'seg_explain'``
    asks the raw question plus an ``EXPLANATORY_QUESTION_LIST`` request and answers the
    ``{seg}`` answer followed by the explanation; ``'explain'`` asks the raw question and
    answers the explanation alone (no target).

    With ``deterministic=True`` (test pipelines) the official validation wording is used:
    ``'What is {phrase} in this image? Please output segmentation mask.'`` (or
    ``'{sent} Please output segmentation mask.'``) answered ``'{seg}.'`` (``'{seg}, {seg} and
    {seg}.'`` for several targets, :data:`NO_TARGET_ANSWER` for none).

    Required keys: ``question`` and ``targets``, or ``phrases`` and ``phrase_targets``
    (``SampleReferPhrases``). Optional: ``is_sentence``, ``text_answer``, ``answer_mode``,
    ``explanation``.
    Added keys: ``conversation`` (list of ``dict(role, content)``), ``answer`` (with ``{seg}``).

    Args:
        use_expand_question_list (bool): Add the official expanded question templates (seed
            recipe: True). Defaults to False.
        deterministic (bool): No random choice (test pipelines). Defaults to False.

    Raises:
        ValueError: An explanatory ``answer_mode`` without an ``explanation``, an unknown mode,
            or ``'explain'`` with targets left.
    """

    def __init__(self, use_expand_question_list: bool = False,
                 deterministic: bool = False) -> None:
        self.short_templates: List[str] = list(SHORT_QUESTION_TEMPLATES)
        self.long_templates: List[str] = list(LONG_QUESTION_TEMPLATES)
        if use_expand_question_list:
            self.short_templates.extend(EXPAND_SHORT_QUESTION_TEMPLATES)
            self.long_templates.extend(EXPAND_LONG_QUESTION_TEMPLATES)
        self.use_expand_question_list = use_expand_question_list
        self.deterministic = deterministic

    def _choice(self, options: Sequence[str]) -> str:
        return options[0] if self.deterministic else options[np.random.randint(len(options))]

    def _question(self, text: str, is_sentence: bool) -> str:
        if self.deterministic:
            # The official validation writes '<image>\n What is ...' (a space after the newline,
            # which LLaMA's tokenizer encodes differently) and does not lowercase the phrase
            # (refCOCO sentences come lowercased from the dataset; ReasonSeg's as written).
            template = TEST_LONG_QUESTION if is_sentence else TEST_SHORT_QUESTION
            return ' ' + template.format(sent=text, class_name=text)
        if is_sentence:
            return self._choice(self.long_templates).format(sent=text)
        return self._choice(self.short_templates).format(class_name=text.lower())

    def user_prompt(self, question: str) -> str:
        """The user turn the test pipeline writes for a full-sentence ``question``.

        :mod:`pixellm.apis` (and so ``tools/chat.py`` and the web demo) asks a user's question in
        this form: the official validation's ReasonSeg wording (``' {sent} Please output
        segmentation mask.'``), whatever ``deterministic`` is.

        Args:
            question (str): The question as the user wrote it.

        Returns:
            str: The question in the validation template.
        """
        return ' ' + TEST_LONG_QUESTION.format(sent=question)

    def _answer(self, phrases: Sequence[str], groups: Sequence[Sequence[dict]]) -> str:
        counts = [len(group) for group in groups]
        total = sum(counts)
        if total == 0 and len(phrases) == 1:
            return NO_TARGET_ANSWER
        if self.deterministic:
            return _segs(total) + '.' if total else NO_TARGET_ANSWER
        if counts == [1]:
            return self._choice(ONE_TARGET_ANSWER_TEMPLATES).format(seg=SEG_PLACEHOLDER)
        if len(phrases) == 1 or all(c == 1 for c in counts):
            if len(phrases) > 1 and np.random.randint(2):
                template = self._choice(PHRASE_ANSWER_TEMPLATES)
                # The official code drops each clause's '.' and puts one after the last.
                return join_items([
                    template.format(class_name=p, seg=SEG_PLACEHOLDER)[:-1] for p in phrases
                ]) + '.'
            return self._choice(REFER_MULTI_ANSWER_TEMPLATES).format(
                class_name=join_items(phrases).lower(), seg=_segs(total))
        clauses = []
        for phrase, count in zip(phrases, counts):
            if count == 0:
                clauses.append(NO_TARGET_CLAUSE.format(class_name=phrase))
            else:
                verb = 'is' if count == 1 else 'are'
                clauses.append(f'{phrase} {verb} {_segs(count)}')
        return join_items(clauses) + '.'

    def transform(self, results: dict) -> dict:
        """Write the conversation.

        Args:
            results (dict): Pipeline dict after the phrases are drawn.

        Returns:
            dict: ``results`` with ``conversation`` and ``answer``.
        """
        phrases = [p.strip() for p in results.get('phrases') or [results['question']]]
        groups = results.get('phrase_targets') or [results['targets']]
        text = join_items(phrases)
        mode = results.get('answer_mode', 'seg')
        if mode not in ANSWER_MODES:
            raise ValueError(f'BuildReferConversation: unknown answer_mode {mode!r}; expected '
                             f'one of {ANSWER_MODES}')
        explanation: Optional[str] = results.get('explanation')
        if mode != 'seg' and not explanation:
            ctx = record_context(results)
            raise ValueError(f'BuildReferConversation: answer_mode {mode!r} needs the record\'s '
                             f'explanation, but {ctx["record"]} of {ctx["file"]} has none')
        if mode == 'explain' and results['targets']:
            raise ValueError('BuildReferConversation: an explanation-only answer has no target; '
                             'put ChooseExplanatoryAnswer before DecodeTargetMasks')
        text_answer = results.get('text_answer')
        if mode == 'seg':
            question = self._question(text, bool(results.get('is_sentence', False)))
            answer = text_answer if text_answer is not None else self._answer(phrases, groups)
        elif mode == 'seg_explain':
            question = f'{text} {self._choice(EXPLANATORY_QUESTION_TEMPLATES)}'
            answer = f'{self._answer(phrases, groups)} {explanation}'
        else:
            question, answer = text, explanation
        results['conversation'] = [
            dict(role='user', content=f'{DEFAULT_IMAGE_TOKEN}\n{question}'),
            dict(role='assistant', content=answer),
        ]
        results['answer'] = answer
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(use_expand_question_list='
                f'{self.use_expand_question_list}, deterministic={self.deterministic})')
