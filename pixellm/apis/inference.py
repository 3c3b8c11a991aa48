"""Load a trained PixelLM and ask it about an image: ``init_model`` and ``inference``.

``tools/chat.py``, the web demo (``demo/app.py``) and ``tools/test.py --show-dir`` (through
:func:`pixellm.visualization.render_prediction`) share this path. The image goes through the
config's own transforms (``LoadImageFromFile``, ``ResizeLongestSide``), the question through the
model's text processor (the one the config's pipelines tokenize with: tokenizer, chat template,
image placeholder), and the model through ``data_preprocessor`` and ``predict`` as in the runner's
test step; a question is worded as the test pipeline words it (a MUSE test question is wrapped in
the first official question template), so it gets exactly the prediction ``tools/test.py`` makes.
"""
import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from PIL import Image

from pixellm.datasets.transforms import LoadImageFromFile, PackPixelLMInputs, ResizeLongestSide
from pixellm.registry import MODELS
from pixellm.text import TextProcessor
from pixellm.utils.constants import DEFAULT_IMAGE_TOKEN
from pixellm.visualization import number_targets, render_mask_overlay

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
# (question, raw answer) pairs of earlier turns about the same image.
History = Sequence[Tuple[str, str]]

PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class InferenceInputError(ValueError):
    """A user input that cannot be answered (no such image, not an image, empty question).

    Args:
        field (str): ``'image'`` or ``'question'``: which input is wrong.
        message (str): What is wrong with it.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def check_text(text: str, field: str) -> None:
    """Refuse text that cannot be encoded as UTF-8 (and so cannot be tokenized).

    Python turns command-line or file bytes that are not valid UTF-8 into lone surrogates
    (``'\\udcff'``); the tokenizer cannot encode them.

    Args:
        text (str): The text.
        field (str): Which input it is, e.g. ``'question'``.

    Raises:
        InferenceInputError: The text holds a lone surrogate; the message gives its position.
    """
    try:
        text.encode('utf-8')
    except UnicodeEncodeError as err:
        raise InferenceInputError(
            field, f'the {field} is not valid text: character {err.start} is '
            f'{text[err.start]!r}, an undecodable byte (give the {field} as UTF-8)') from None


@dataclass
class InferenceResult:
    """One answer: text with numbered targets, and one mask per target.

    Attributes:
        question (str): The question as asked (without the image placeholder).
        text (str): The answer with each target written ``[k]`` where its codebook tokens stood.
        raw_text (str): The decoded answer with the codebook tokens (history for the next turn).
        labels (list[str]): Per target, the words naming it in the answer (``''`` when none).
        masks (np.ndarray): ``(N, H, W)`` bool masks at the image's resolution, in answer order.
        scores (np.ndarray): ``(N,)`` mean foreground probability of each mask.
        image (np.ndarray): The RGB image ``(H, W, 3)`` the masks belong to.
        img_path (str): The image file, or ``''`` for an in-memory image.
        truncated (bool): The answer used the whole generation budget without ending, so targets
            after the cut have no mask (raise ``max_new_tokens``).
    """
    question: str
    text: str
    raw_text: str
    labels: List[str]
    masks: np.ndarray
    scores: np.ndarray
    image: np.ndarray
    img_path: str = ''
    truncated: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        """Number of predicted targets (masks)."""
        return int(self.masks.shape[0])

    def target_lines(self) -> List[str]:
        """One line per target: ``[k] words: pixels px, score s`` (``(unnamed)`` without words)."""
        return [f'[{k + 1}] {self.labels[k] or "(unnamed)"}: {int(self.masks[k].sum())} px, '
                f'score {self.scores[k]:.3f}' for k in range(self.num_targets)]

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The image with each target's mask in its own colour, question, answer and legend."""
        labels = self.labels if len(self.labels) == self.num_targets else None
        return render_mask_overlay(Image.fromarray(self.image), self.masks, self.question,
                                   self.text, alpha=alpha, labels=labels)

    def save(self, out_dir: str, stem: str = 'answer', save_rle: bool = False) -> Dict[str, Any]:
        """Write the overlay PNG, one binary PNG per target and optionally RLE json.

        Files: ``<stem>_overlay.png``, ``<stem>_mask<k>.png`` (k from 1, 255 = target) and with
        ``save_rle`` ``<stem>_masks.json`` (COCO RLE per target, with text, labels and scores).

        Args:
            out_dir (str): Output folder (created).
            stem (str): File name prefix. Defaults to ``'answer'``.
            save_rle (bool): Also write the RLE json. Defaults to False.

        Returns:
            dict: ``overlay`` (path), ``masks`` (paths) and ``rle`` (path or None).
        """
        os.makedirs(out_dir, exist_ok=True)
        # Files of an earlier answer under the same stem (more targets) must not linger.
        for name in os.listdir(out_dir):
            if name == f'{stem}_masks.json' or (name.startswith(f'{stem}_mask')
                                                 and name.endswith('.png')
                                                 and name[len(stem) + 5:-4].isdigit()):
                os.remove(osp.join(out_dir, name))
        overlay_path = osp.join(out_dir, f'{stem}_overlay.png')
        self.overlay().save(overlay_path)
        mask_paths = []
        for k, mask in enumerate(self.masks, start=1):
            path = osp.join(out_dir, f'{stem}_mask{k}.png')
            Image.fromarray(mask.astype(np.uint8) * 255).save(path)
            mask_paths.append(path)
        rle_path = None
        if save_rle:
            from pixellm.datasets.dataset_utils import encode_mask
            rle_path = osp.join(out_dir, f'{stem}_masks.json')
            targets = [dict(index=k + 1, label=self.labels[k] if k < len(self.labels) else '',
                            score=float(self.scores[k]), segmentation=encode_mask(mask))
                       for k, mask in enumerate(self.masks)]
            with open(rle_path, 'w') as f:
                json.dump(dict(image=self.img_path, question=self.question, answer=self.text,
                               raw_answer=self.raw_text, targets=targets), f, indent=2)
        return dict(overlay=overlay_path, masks=mask_paths, rle=rle_path)


def _pipeline_settings(cfg: Config) -> Dict[str, Any]:
    """Question wording and resize settings of the test (else train) pipeline.

    ``user_prompt`` is the ``user_prompt`` method of the pipeline's conversation step
    (``BuildMuseConversation``, ``BuildReferConversation``), or ``None`` when the pipeline asks
    questions as they are. (The tokenizer, chat template and image placeholder are the model's
    text processor's, which the pipelines share.)
    """
    from pixellm.engine.tool_config import type_name
    from pixellm.registry import TRANSFORMS
    settings = dict(interpolation='bilinear', user_prompt=None)
    for loader in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        pipeline = dataset.get('pipeline') if isinstance(dataset, dict) else None
        if not pipeline:
            continue
        for step in pipeline:
            name = type_name(step.get('type')) if isinstance(step, dict) else ''
            if name == 'ResizeLongestSide':
                settings['interpolation'] = step.get('interpolation', 'bilinear')
            elif 'Conversation' in name and settings['user_prompt'] is None:
                cls = TRANSFORMS.get(step['type']) if isinstance(step['type'], str) \
                    else step['type']
                if cls is not None and hasattr(cls, 'user_prompt'):
                    settings['user_prompt'] = TRANSFORMS.build(dict(step)).user_prompt
        return settings
    return settings


def init_model(config: Union[str, Config], checkpoint: Optional[str] = None,
               device: str = 'cpu', precision: str = 'fp32',
               quantization: Optional[str] = None, cfg_options: Optional[dict] = None,
               trusted: Optional[bool] = None) -> torch.nn.Module:
    """Build a PixelLM from a config and load its weights, ready for :func:`inference`.

    Args:
        config (str | Config): Config file or loaded config.
        checkpoint (str, optional): A ``.pth`` written by ``tools/train.py`` (or converted), or a
            folder written by ``tools/model_converters/export_hf.py``. None keeps the random
            initialisation (for smoke tests only).
        device (str): ``'cpu'``, ``'cuda'``, ``'cuda:1'``... Defaults to ``'cpu'``.
        precision (str): ``'fp32'``, ``'bf16'`` or ``'fp16'``: the dtype of every weight.
            Defaults to ``'fp32'``.
        quantization (str, optional): ``'8bit'`` or ``'4bit'`` loads the LLM with bitsandbytes
            (CUDA); only for an exported folder, whose ``llm/`` is a plain transformers
            checkpoint. Defaults to None.
        cfg_options (dict, optional): Overrides merged into the config (``--cfg-options``).
        trusted (bool, optional): Unpickle the ``.pth`` without the allow-list (see
            :func:`pixellm.engine.load_checkpoint_safely`).

    Returns:
        PixelLM: The model in eval mode on ``device``, with ``model.cfg`` set.

    Raises:
        FileNotFoundError: The config or checkpoint does not exist.
        CheckpointMismatchError: The checkpoint does not fit the config's model; the message lists
            the keys.
        ValueError: Unknown precision, or 4/8-bit loading asked for a ``.pth``.
    """
    from pixellm.models.export import CONFIG_FILE, load_exported, load_training_checkpoint
    from pixellm.utils import register_all_modules
    from pixellm.utils.config import load_config
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    register_all_modules(init_default_scope=True)
    if isinstance(config, Config):
        cfg = config
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        from pixellm.text.sharing import share_text_processor
        share_text_processor(cfg)
    else:
        cfg = load_config(config, cfg_options=cfg_options)
    exported = checkpoint is not None and osp.isfile(osp.join(checkpoint, CONFIG_FILE))
    if checkpoint is not None and not exported and not osp.isfile(checkpoint):
        if osp.isdir(checkpoint) and any(n.endswith('model_states.pt')
                                         for n in os.listdir(checkpoint)):
            raise FileNotFoundError(
                f'{checkpoint!r} is a DeepSpeed checkpoint folder, not a checkpoint file: turn '
                'it into one .pth with tools/model_converters/deepspeed_to_pth.py')
        raise FileNotFoundError(
            f'checkpoint {checkpoint!r} does not exist (give a .pth file written by '
            'tools/train.py or a folder written by tools/model_converters/export_hf.py)')
    if quantization is not None:
        if not exported:
            raise ValueError(f'{quantization} loading quantises the LLM as transformers loads '
                             'it, which needs a Hugging Face folder: export the checkpoint with '
                             'tools/model_converters/export_hf.py and pass the folder')
        if torch.device(device).type != 'cuda':
            raise ValueError(f'{quantization} loading runs on a CUDA device (bitsandbytes); '
                             f'got device {device!r}')
        # bitsandbytes places the LLM on the current CUDA device.
        torch.cuda.set_device(torch.device(device))
    if exported:
        # The folder holds the model config; model.* options of cfg_options still apply.
        overrides = {k[len('model.'):]: v for k, v in (cfg_options or {}).items()
                     if k.startswith('model.')}
        if quantization:
            overrides['llm.quantization'] = quantization
        model = load_exported(checkpoint, overrides=overrides or None)
    else:
        model = MODELS.build(cfg.model)
        if checkpoint is not None:
            load_training_checkpoint(model, checkpoint, trusted=trusted)
        else:
            model.init_weights()
    dtype = PRECISIONS[precision]
    if quantization is None:
        model.to(device=device, dtype=dtype)
    else:
        # The quantised LLM already sits on its CUDA device; the rest follows it.
        for name, child in model.named_children():
            if name != 'llm':
                child.to(device=device, dtype=dtype)
    model.cfg = cfg
    model.pixellm_inference = dict(_pipeline_settings(cfg), dtype=dtype)
    return model.eval()


def load_image(image: ImageInput) -> Tuple[np.ndarray, str]:
    """Read an image as :func:`inference` does.

    Args:
        image (str | PIL.Image.Image | np.ndarray): Image file, PIL image or array.

    Returns:
        tuple[np.ndarray, str]: The RGB ``uint8`` array ``(H, W, 3)`` and the file path (``''``
        for an in-memory image).

    Raises:
        InferenceInputError: The file does not exist or is not an image, or the array has
            another shape.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not path.strip():
            raise InferenceInputError('image', 'no image path given')
        if not osp.isfile(path):
            raise InferenceInputError('image', f'image {path!r} does not exist')
        try:
            results = LoadImageFromFile()(dict(img_path=path, record_index='(chat)'))
        except ValueError as err:  # DatasetFormatError: not decodable
            raise InferenceInputError(
                'image', f'{path!r} is not an image (PIL cannot read it)') from err
        return results['img'], path
    if isinstance(image, Image.Image):
        return np.asarray(image.convert('RGB'), dtype=np.uint8), ''
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InferenceInputError('image', f'an image array must be (H, W, 3) RGB, got '
                                  f'{array.shape}')
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8), ''


def build_conversation(question: str, history: Optional[History] = None,
                       user_prompt: Optional[Callable[[str], str]] = None
                       ) -> List[Dict[str, str]]:
    """The neutral conversation for a question (and earlier turns), ending with the question.

    Each question is put in ``user_prompt``'s wording (the test pipeline's, so the model is asked
    as the evaluation asked it), and the image placeholder opens the first user turn
    (``'<image>\\n' + prompt``). A first question that holds the placeholder itself is used as
    written.

    Args:
        question (str): The new question.
        history (Sequence[tuple[str, str]], optional): Earlier ``(question, raw answer)`` turns.
        user_prompt (Callable[[str], str], optional): Puts a question in the test pipeline's
            wording (``BuildMuseConversation.user_prompt``); ``None`` asks it as it is.

    Returns:
        list[dict]: ``dict(role, content)`` messages ending with the user's question.

    Raises:
        InferenceInputError: The question is empty, or is not text that UTF-8 can encode (a lone
            surrogate, as Python decodes command-line bytes that are not UTF-8).
    """
    if not question or not question.strip():
        raise InferenceInputError('question', 'the question is empty')
    check_text(question, 'question')
    turns = list(history or []) + [(question.strip(), None)]
    for i, (q, _) in enumerate(turns):
        count = q.count(DEFAULT_IMAGE_TOKEN)
        if count > (1 if i == 0 else 0):
            raise InferenceInputError(
                'question', f'{DEFAULT_IMAGE_TOKEN!r} marks where the image goes; it may appear '
                'once, in the first question only (it is added there when absent)')
    messages = []
    for i, (q, a) in enumerate(turns):
        if DEFAULT_IMAGE_TOKEN not in q:
            q = user_prompt(q) if user_prompt is not None else q
            if i == 0:
                q = TextProcessor.image_turn(q)
        messages.append(dict(role='user', content=q))
        if a is not None:
            messages.append(dict(role='assistant', content=a))
    return messages


@torch.no_grad()
def inference(model: torch.nn.Module, image: ImageInput, question: str,
              history: Optional[History] = None,
              max_new_tokens: Optional[int] = None) -> InferenceResult:
    """Answer ``question`` about ``image`` with text and one mask per target.

    Args:
        model (PixelLM): From :func:`init_model`.
        image (str | PIL.Image.Image | np.ndarray): Image file, PIL image or RGB array.
        question (str): The question; the image placeholder is added to the first turn.
        history (Sequence[tuple[str, str]], optional): Earlier ``(question, raw_text)`` turns
            about the same image (``InferenceResult.raw_text``), for multi-turn chat.
        max_new_tokens (int, optional): Generation budget; None keeps the model's.

    Returns:
        InferenceResult: Text, numbered text, labels, masks, scores.

    Raises:
        InferenceInputError: The image does not exist or is not an image, or the question is
            empty.
    """
    settings = getattr(model, 'pixellm_inference', None) or dict(
        interpolation='bilinear', dtype=next(model.parameters()).dtype)
    img, img_path = load_image(image)
    messages = build_conversation(question, history, settings.get('user_prompt'))
    shown_question = question.replace(DEFAULT_IMAGE_TOKEN, '').strip()
    results = dict(img=img, img_path=img_path or '<array>', ori_shape=img.shape[:2],
                   img_shape=img.shape[:2], question=shown_question, answer='',
                   conversation=messages, num_targets=0)
    results['prompt_ids'] = model.text_processor.encode_prompt(messages)
    results = ResizeLongestSide(model.data_preprocessor.size,
                                settings['interpolation'])(results)
    packed = PackPixelLMInputs()(results)
    data = model.data_preprocessor(pseudo_collate([packed]), False)
    data['inputs'] = data['inputs'].to(settings['dtype'])
    # The runner's test step calls the same predict (through forward(mode='predict')).
    sample = model.predict(data['inputs'], data['data_samples'], max_new_tokens=max_new_tokens)[0]
    raw_text = sample.metainfo['pred_text']
    text, labels = number_targets(raw_text, model.codebook.tokens)
    masks = sample.pred_instances.masks.numpy().astype(bool)
    if len(labels) != len(masks):
        # The text and the ids disagree (a codebook token spelled from ordinary sub-tokens):
        # no label rather than a label on the wrong mask.
        labels = [''] * len(masks)
    return InferenceResult(question=shown_question, text=text, raw_text=raw_text, labels=labels,
                           masks=masks, scores=sample.pred_instances.scores.float().numpy(),
                           image=img, img_path=img_path,
                           truncated=bool(sample.metainfo.get('pred_truncated', False)))
