"""Drawing PixelLM answers: numbered targets in the text, one coloured mask per target, a legend.

One renderer serves :class:`PixelLMVisualizer` (validation images, ``tools/test.py --show-dir``),
``tools/chat.py``, :mod:`pixellm.apis` and the web demo, so a prediction looks the same wherever
it is shown.
"""
import colorsys
import re
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Color = Tuple[int, int, int]

# Words that end the phrase naming a target when read backwards from its marker.
_CLAUSE_BREAK = re.compile(r'[,;:.!?()]|\b(?:and|or|is|are|was|were|it|they|sure)\b', re.I)
_MAX_LABEL_WORDS = 6


def mask_colors(num: int) -> List[Color]:
    """``num`` distinct, saturated RGB colours (golden-ratio hue steps, reproducible).

    Args:
        num (int): Number of colours.

    Returns:
        list[tuple[int, int, int]]: RGB colours in 0-255.
    """
    colors = []
    for i in range(num):
        hue = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return colors


def number_targets(text: str, tokens: Sequence[str]) -> Tuple[str, List[str]]:
    """Write each target of a generated answer as ``[k]`` and name the words before it.

    A target is the codebook ``tokens`` in order, possibly with other text (spaces) between them,
    exactly as :meth:`SegCodebook.find_targets` groups ids with ``strict=False``: codebook tokens
    that do not complete a group are dropped from the text and have no mask. So the ``k``-th
    marker stands for the ``k``-th predicted mask.

    Args:
        text (str): The decoded answer, codebook tokens as their strings.
        tokens (Sequence[str]): The codebook's tokens (``model.codebook.tokens``).

    Returns:
        tuple[str, list[str]]: The text with numbered markers, and per target the phrase that
        names it (up to six words before its marker, back to the previous clause break or
        marker; ``''`` when nothing precedes it).
    """
    if not tokens:
        return text, []
    pattern = re.compile('|'.join(re.escape(t) for t in sorted(set(tokens), key=len,
                                                                    reverse=True)))
    rank = {t: i for i, t in enumerate(tokens)}
    matches = list(pattern.finditer(text))
    # The grouping of SegCodebook.find_targets(strict=False), on the strings.
    groups, current = [], []
    for match in matches:
        r = rank[match.group(0)]
        if r == len(current):
            current.append(match)
            if len(current) == len(tokens):
                groups.append((current[0].start(), current[-1].end()))
                current = []
        else:
            current = [match] if r == 0 else []
    # Cut spans: each complete group becomes a marker, every other codebook token disappears.
    spans = [(start, end, True) for start, end in groups]
    spans += [(m.start(), m.end(), False) for m in matches
              if not any(start <= m.start() < end for start, end in groups)]
    pieces: List[str] = []
    labels: List[str] = []
    cursor = 0
    for start, end, is_target in sorted(spans):
        pieces.append(text[cursor:start])
        if is_target:
            labels.append(_label_before(''.join(pieces)))
            pieces.append(f'[{len(labels)}]')
        cursor = end
    pieces.append(text[cursor:])
    numbered = re.sub(r'[ \t]{2,}', ' ', ''.join(pieces)).strip()
    numbered = re.sub(r' +([,.;:!?])', r'\1', numbered)
    return numbered, labels


def _label_before(prefix: str) -> str:
    """The last few words of ``prefix`` after its last clause break or marker."""
    tail = re.split(r'\[\d+\]', prefix)[-1]
    breaks = list(_CLAUSE_BREAK.finditer(tail))
    if breaks:
        tail = tail[breaks[-1].end():]
    words = tail.split()
    return ' '.join(words[-_MAX_LABEL_WORDS:])


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> List[str]:
    """Split ``text`` into lines no wider than ``width`` pixels (long words are cut)."""
    lines: List[str] = []
    for paragraph in text.splitlines() or ['']:
        words = paragraph.split(' ')
        line = ''
        for word in words:
            candidate = word if not line else f'{line} {word}'
            if draw.textlength(candidate, font=font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            # A single word wider than the image is cut into pieces that fit.
            while draw.textlength(word, font=font) > width and len(word) > 1:
                cut = max(1, len(word) * width // max(1, int(draw.textlength(word, font=font))))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def blend_masks(image: Image.Image, masks: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with mask ``i`` blended in colour ``mask_colors(N)[i]`` (no text).

    Args:
        image (PIL.Image.Image): The original image.
        masks (np.ndarray): ``(N, H, W)`` bool masks at the image's resolution.
        alpha (float): Weight of the mask colour. Defaults to 0.5.

    Returns:
        PIL.Image.Image: RGB image of the input's size.

    Raises:
        ValueError: The masks are not at the image's resolution.
    """
    rgb = np.asarray(image.convert('RGB')).astype(np.float32)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or (len(masks) and masks.shape[1:] != rgb.shape[:2]):
        raise ValueError(f'masks of shape {tuple(masks.shape)} do not match the image of '
                         f'{rgb.shape[0]}x{rgb.shape[1]}; give (N, H, W) masks at the '
                         'image\'s resolution')
    for mask, color in zip(masks, mask_colors(len(masks))):
        rgb[mask] = rgb[mask] * (1 - alpha) + np.asarray(color, np.float32) * alpha
    return Image.fromarray(np.round(rgb).clip(0, 255).astype(np.uint8))


def render_mask_overlay(image: Image.Image, masks: np.ndarray, question: str, answer: str,
                        alpha: float = 0.5,
                        labels: Optional[Sequence[str]] = None) -> Image.Image:
    """The image with mask ``i`` blended in colour ``mask_colors(N)[i]``, text in a band below.

    The band holds ``Q: question``, ``A: answer`` and a legend: per target a swatch of its
    colour, its number and, when given, its label (the words that name it in the answer).

    Args:
        image (PIL.Image.Image): The original image.
        masks (np.ndarray): ``(N, H, W)`` bool masks at the image's resolution.
        question (str): The question, written as ``Q: ...``.
        answer (str): The answer, written as ``A: ...``.
        alpha (float): Weight of the mask colour. Defaults to 0.5.
        labels (Sequence[str], optional): One label per mask for the legend. Defaults to None
            (numbers only).

    Returns:
        PIL.Image.Image: RGB image of width W and height H plus the text band.
    """
    if labels is not None and len(labels) != len(masks):
        raise ValueError(f'{len(labels)} legend label(s) for {len(masks)} mask(s)')
    overlay = blend_masks(image, masks, alpha)
    colors = mask_colors(len(masks))
    font = ImageFont.load_default()
    width = overlay.width
    measure = ImageDraw.Draw(overlay)
    margin = 4
    lines = _wrap(measure, f'Q: {question}', font, width - 2 * margin)
    lines += _wrap(measure, f'A: {answer}', font, width - 2 * margin)
    left, top, right, bottom = measure.textbbox((0, 0), 'Ag', font=font)
    line_height = bottom - top + 2
    swatch = line_height - 2
    # Legend entries flow left to right and wrap to new rows.
    entries = [str(i + 1) + (f' {labels[i]}' if labels and labels[i] else '')
               for i in range(len(masks))]
    rows: List[List[int]] = []
    x = margin
    for i, entry in enumerate(entries):
        need = swatch + 2 + int(measure.textlength(entry, font=font)) + margin
        if not rows or (x + need > width - margin and rows[-1]):
            rows.append([])
            x = margin
        rows[-1].append(i)
        x += need
    band = margin * 2 + line_height * (len(lines) + len(rows))

    canvas = Image.new('RGB', (width, overlay.height + band), (255, 255, 255))
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = overlay.height + margin
    for line in lines:
        draw.text((margin, y), line, fill=(0, 0, 0), font=font)
        y += line_height
    # A colour swatch per target, in answer order, so the text's targets can be matched to masks.
    for row in rows:
        x = margin
        for i in row:
            draw.rectangle([x, y, x + swatch, y + swatch], fill=colors[i])
            x += swatch + 2
            draw.text((x, y), entries[i], fill=(0, 0, 0), font=font)
            x += int(draw.textlength(entries[i], font=font)) + margin
        y += line_height
    return canvas


def render_prediction(image: Image.Image, masks: np.ndarray, question: str, raw_answer: str,
                      tokens: Sequence[str] = (), alpha: float = 0.5) -> Image.Image:
    """Render a generated answer: targets numbered in the text, legend labelled with their words.

    Args:
        image (PIL.Image.Image): The original image.
        masks (np.ndarray): ``(N, H, W)`` predicted masks, in answer order.
        question (str): The question.
        raw_answer (str): The decoded answer with the codebook tokens as strings.
        tokens (Sequence[str]): The codebook's tokens; empty leaves the text as it is.
        alpha (float): Weight of the mask colour. Defaults to 0.5.

    Returns:
        PIL.Image.Image: See :func:`render_mask_overlay`.
    """
    text, labels = number_targets(raw_answer, tokens)
    if len(labels) != len(masks):
        # The masks came from elsewhere (e.g. ground truth): keep numbers only.
        labels = None
    return render_mask_overlay(image, masks, question, text, alpha=alpha, labels=labels)
