"""Train the tiny byte-level BPE tokenizer shipped with pixellm (no download for tests, demos).

The corpus is generated here from fixed word lists (segmentation questions and answers, the chat
template text, digits and punctuation), so the same ``tokenizers`` version always writes the same
file. Usage::

    python tools/misc/train_tiny_tokenizer.py            # rewrite the shipped asset
    python tools/misc/train_tiny_tokenizer.py --check    # exit 1 if the asset is out of date
"""
import argparse
import itertools
import json
import os.path as osp
import sys
from typing import Dict, List

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# LLaMA layout, which the official PixelLM code (LLaVA v1) relies on: unk/pad 0, bos 1, eos 2.
SPECIAL_TOKENS = ['<unk>', '<s>', '</s>']
VOCAB_SIZE = 1024
DEFAULT_OUT = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'pixellm', 'models', 'tokenizers',
    'assets', 'tiny_tokenizer.json')

COLOURS = ['red', 'green', 'blue', 'yellow', 'orange', 'purple', 'pink', 'brown', 'black', 'white',
           'gray', 'grey', 'cyan', 'magenta', 'dark', 'light']
SHAPES = ['circle', 'square', 'triangle', 'star', 'ellipse', 'ring', 'cross', 'rectangle',
          'diamond', 'hexagon', 'pentagon', 'heart', 'arrow', 'line', 'dot', 'polygon']
SIZES = ['small', 'large', 'big', 'tiny', 'huge', 'medium', 'little']
POSITIONS = ['on the left', 'on the right', 'at the top', 'at the bottom', 'above the circle',
             'below the square', 'next to the star', 'in the center', 'in the middle',
             'in the upper left corner', 'in the lower right corner', 'between the two rings',
             'near the edge']
SUPERLATIVES = ['largest', 'smallest', 'leftmost', 'rightmost', 'topmost', 'lowest', 'biggest']
QUESTION_TEMPLATES = [
    'Please segment the {size} {colour} {shape} {position}.',
    'Can you segment the {colour} {shape} in this image?',
    'Could you please segment the {superlative} {shape}?',
    'What is the {superlative} object in the image? Please output the segmentation mask.',
    'Where is the {colour} {shape}? Please respond with a segmentation mask.',
    'Which object is {position}? Please segment it.',
    'What are the {colour} objects in this picture? Please segment them.',
    'Is there a {size} {shape} {position}? If so, segment it.',
    'How many {shape}s are there in the image? Segment each of them.',
    'Find the {shape} that is {colour} and {size}, and highlight it.',
]
ANSWER_TEMPLATES = [
    'Sure, it is the {colour} {shape}.',
    'Sure, they are the {colour} {shape} and the {size} {shape}.',
    'It is the {superlative} {shape} {position}.',
    'They are {number} {colour} {shape}s.',
    'The {size} {colour} {shape} is {position}.',
    'There are {number} objects: a {colour} {shape} and a {size} ring.',
    "I'm sorry, there is no {colour} {shape} in the image.",
]
SYSTEM_PROMPTS = [
    'A chat between a curious human and an artificial intelligence assistant. The assistant gives '
    "helpful, detailed, and polite answers to the human's questions.",
    'A chat between a curious user and an artificial intelligence assistant. The assistant gives '
    "helpful, detailed, and polite answers to the user's questions.",
    'You are a helpful language and vision assistant. You are able to understand the visual '
    'content that the user provides, and assist the user with a variety of tasks using natural '
    'language.',
]
# Everyday words so that free-form answers (and test sentences) also get real merges.
COMMON_WORDS = (
    'a about after again all also an animal any around as at back background be because bed '
    'before behind being best between bird boat body book both bottle bowl box boy building but '
    'by cake can car cat chair child city clock cloud come computer could cup day do dog door '
    'down each even every eye face field find first flower food for from front girl give glass '
    'go good grass ground group hair hand has have he head her here him his hold horse house '
    'how if in into it its just keep kind kitchen know last left let like look made make man '
    'many may me more most mountain much must my near need new no not now of off old on one '
    'only or other our out over part people person phone picture place plant plate play right '
    'road room same say see she should side sign sit sky so some something stand still street '
    'such table take tell than that their them then there these they thing think this those '
    'through time to too tree truck two under up use very wall was water way we wear well '
    'were what when where which while white who why will window with woman word work would '
    'write yes you your zebra umbrella elephant giraffe bicycle motorcycle airplane train bus '
    'shape shapes object objects mask masks region regions target targets segmentation'
).split()
EXTRA_TEXT = [
    'USER: <image>\nWhat is in the image? ASSISTANT: The image shows a red circle.</s>',
    '[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nWhat is this? [/INST] A star. </s>',
    'The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 12 100 2024 3.14',
    'Punctuation: . , ? ! : ; \' " ( ) [ ] { } < > - _ / \\ | @ # $ % ^ & * + = ~ `',
    'Yes. No. Okay. Thank you! Hello, how are you? I am fine, thanks.',
]


def build_corpus() -> List[str]:
    """Return the fixed training corpus: every line is built from the word lists above.

    Returns:
        list[str]: Corpus lines in a deterministic order.
    """
    lines = list(SYSTEM_PROMPTS) + list(EXTRA_TEXT)
    # A strided walk over the product keeps the corpus small while every word meets many contexts.
    combos = list(itertools.product(COLOURS, SHAPES, SIZES))
    for i, (colour, shape, size) in enumerate(combos[::3]):
        fields = dict(colour=colour, shape=shape, size=size,
                      position=POSITIONS[i % len(POSITIONS)],
                      superlative=SUPERLATIVES[i % len(SUPERLATIVES)], number=str(i % 13))
        question = QUESTION_TEMPLATES[i % len(QUESTION_TEMPLATES)].format(**fields)
        answer = ANSWER_TEMPLATES[i % len(ANSWER_TEMPLATES)].format(**fields)
        system = SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]
        lines.append(f'{system} USER: <image>\n{question} ASSISTANT: {answer}</s>')
        lines.append(f'[INST] {question} [/INST] {answer} </s>')
    # Sentences of everyday words with a stride co-prime to the list length, so each word meets
    # several neighbours and its common pairs pass the trainer's min_frequency.
    n = len(COMMON_WORDS)
    for start in range(n):
        words = [COMMON_WORDS[(start + 7 * k) % n] for k in range(12)]
        lines.append(' '.join(words).capitalize() + ('.' if start % 2 else '?'))
    return lines


def train_tokenizer(corpus: List[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE with LLaMA's special-token ids and a BOS-only post-processor.

    Args:
        corpus (list[str]): Training lines.
        vocab_size (int): Target vocabulary size, special tokens and the 256 byte symbols
            included. Defaults to 1024.

    Returns:
        tokenizers.Tokenizer: The trained tokenizer.
    """
    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False keeps decode(encode(text)) == text; a prefix space would be invented.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos_id = tokenizer.token_to_id('<s>')
    # LLaMA adds BOS and no EOS to every encoded text; the chat template writes EOS itself.
    tokenizer.post_processor = processors.TemplateProcessing(
        single='<s> $A', pair='<s> $A <s> $B', special_tokens=[('<s>', bos_id)])
    return tokenizer


def check_layout(tokenizer: Tokenizer) -> None:
    """Raise ``RuntimeError`` unless the special tokens sit at LLaMA's ids 0, 1 and 2."""
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(f'{token} got id {tokenizer.token_to_id(token)}, '
                               f'expected {expected_id}')


def model_state(tokenizer_json: str) -> Dict:
    """Return the parts of a serialized tokenizer that training decides (vocab and merges)."""
    model = json.loads(tokenizer_json)['model']
    return dict(vocab=model['vocab'], merges=model['merges'])


def main(argv=None) -> int:
    """Train and write (or ``--check``) the asset.

    Args:
        argv (list[str], optional): Command-line arguments; None reads ``sys.argv``.

    Returns:
        int: Exit status, 1 when ``--check`` finds the asset out of date.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=DEFAULT_OUT, help='where to write tokenizer.json')
    parser.add_argument('--vocab-size', type=int, default=VOCAB_SIZE)
    parser.add_argument('--check', action='store_true',
                        help='compare with --out instead of writing it; exit 1 on a difference')
    args = parser.parse_args(argv)

    tokenizer = train_tokenizer(build_corpus(), args.vocab_size)
    check_layout(tokenizer)
    text = tokenizer.to_str(pretty=False)
    if args.check:
        with open(args.out, encoding='utf-8') as f:
            shipped = f.read()
        if model_state(shipped) != model_state(text):
            print(f'{args.out} differs from a fresh training run; rerun without --check')
            return 1
        print(f'{args.out} is up to date')
        return 0
    with open(args.out, 'w', encoding='utf-8') as f:
        f.write(text)
    print(f'wrote {args.out}: vocab size {tokenizer.get_vocab_size()}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
