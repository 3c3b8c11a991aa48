"""Numbered targets in answers, and the legend of the overlay."""
import random

import numpy as np
import pytest
from PIL import Image

from pixellm.visualization import (mask_colors, number_targets, render_mask_overlay,
                                   render_prediction)

from conftest import build_tiny


def test_markers_count_the_targets_the_codebook_finds():
    model = build_tiny()
    tokens = model.codebook.tokens
    rng = random.Random(0)
    words = ['the', 'red', 'circle', 'and', ',', 'is', 'here', '.']
    for _ in range(200):
        # Whole targets, broken groups, stray tokens and words in random order.
        parts = []
        for _ in range(rng.randint(0, 12)):
            kind = rng.random()
            if kind < 0.3:
                parts.append(' '.join(tokens))
            elif kind < 0.5:
                start = rng.randrange(len(tokens))
                parts.append(' '.join(tokens[start:rng.randint(start, len(tokens))]))
            else:
                parts.append(rng.choice(words))
        text = ' '.join(p for p in parts if p)
        numbered, labels = number_targets(text, tokens)
        ids = model.tokenizer(text, add_special_tokens=False, return_tensors='pt').input_ids
        expected = model.codebook.count_targets(ids, strict=False)[0]
        assert len(labels) == expected, text
        assert numbered.count('[') == expected
        assert not any(t in numbered for t in tokens)
        if expected:
            assert f'[{expected}]' in numbered


def test_labels_are_the_words_naming_each_target():
    tokens = ['[SEG0]', '[SEG1]']
    text = ('Sure, the red circle [SEG0] [SEG1] and the small blue square [SEG0] [SEG1] are '
            'here; it is [SEG0] [SEG1].')
    numbered, labels = number_targets(text, tokens)
    assert numbered == 'Sure, the red circle [1] and the small blue square [2] are here; it is [3].'
    assert labels == ['the red circle', 'the small blue square', '']


def test_overlay_colours_each_mask_and_draws_a_labelled_legend():
    image = Image.new('RGB', (60, 40), (10, 20, 30))
    masks = np.zeros((2, 40, 60), bool)
    masks[0, :10, :10] = True
    masks[1, 30:, 50:] = True
    out = np.asarray(render_mask_overlay(image, masks, 'Q?', 'A [1] [2].', alpha=0.5,
                                         labels=['left', 'right']))
    colors = mask_colors(2)
    for k, (y, x) in enumerate([(0, 0), (39, 59)]):
        expected = np.round(np.array([10, 20, 30]) * 0.5 + np.array(colors[k]) * 0.5)
        assert np.array_equal(out[y, x], expected)
    assert np.array_equal(out[20, 30], [10, 20, 30])
    band = out[40:]
    for color in colors:  # each legend swatch is drawn in its mask's colour
        assert (band == np.array(color)).all(-1).sum() > 10
    with pytest.raises(ValueError, match='1 legend label'):
        render_mask_overlay(image, masks, 'Q?', 'A', labels=['one'])


def test_prediction_labels_the_legend_only_when_targets_match_masks():
    image = Image.new('RGB', (120, 20))
    masks = np.zeros((1, 20, 120), bool)
    masks[0, 5:10, 5:10] = True
    tokens = ['[SEG0]']
    same = render_prediction(image, masks, 'Q', 'the dog [SEG0].', tokens)
    assert np.array_equal(np.asarray(same), np.asarray(
        render_mask_overlay(image, masks, 'Q', 'the dog [1].', labels=['the dog'])))
    # Two targets in the text but one mask (e.g. ground truth): numbers only, no error.
    other = render_prediction(image, masks, 'Q', 'a [SEG0] b [SEG0].', tokens)
    assert np.array_equal(np.asarray(other), np.asarray(
        render_mask_overlay(image, masks, 'Q', 'a [1] b [2].')))


def test_masks_of_another_size_are_refused_not_scrambled():
    image = Image.new('RGB', (6, 4))
    # 2 x (3 x 8) has as many pixels as 2 x (4 x 6) but is another size.
    with pytest.raises(ValueError, match=r"masks of shape \(2, 3, 8\) do not match the image of "
                       r"4x6"):
        render_mask_overlay(image, np.zeros((2, 3, 8), bool), 'Q', 'A')
    single = render_mask_overlay(image, np.ones((4, 6), bool), 'Q', 'A')  # one (H, W) mask
    assert single.width == 6
