"""Build a model's full-size architecture without weights or downloads (parameter counts, FLOPs)."""
import copy
from typing import Dict, Tuple

import torch

from pixellm.registry import MODELS


def offline_model_cfg(model_cfg: Dict) -> Dict:
    """Return a copy of a PixelLM model config that builds with random weights and no download.

    ``pretrained`` of the vision encoder, the LLM and a mask encoder (LISA's SAM) is dropped
    (their ``vision_config`` / ``llm_config`` give the same shapes; a timm encoder's
    ``model_name`` does, and its ``pretrained=True`` and ``checkpoint_path`` are turned off), so
    is a pixel decoder's (LISA's SAM mask decoder: its config gives the shapes), and a
    tokenizer that would be
    downloaded is replaced by the shipped tiny tokenizer padded with filler tokens to the LLM's
    vocabulary size, so added tokens get the ids (and the model the rows) they get with the real
    tokenizer.
    """
    cfg = copy.deepcopy(dict(model_cfg))
    for key, shape_key in (('vision_encoder', 'vision_config'), ('llm', 'llm_config'),
                           ('mask_encoder', 'vision_config')):
        if cfg.get(key) is None:
            continue
        part = dict(cfg[key])
        if isinstance(part.get('pretrained'), bool) or part.get('checkpoint_path') is not None:
            # TimmVisionEncoder: the architecture is model_name, the weights a flag or a file.
            part['pretrained'] = False
            part.pop('checkpoint_path', None)
        elif part.get('pretrained') is not None:
            if part.get(shape_key) is None:
                raise ValueError(f'{key} names pretrained={part["pretrained"]!r} but has no '
                                 f'{shape_key} to build it without weights')
            part['pretrained'] = None
        cfg[key] = part
    if isinstance(cfg.get('pixel_decoder'), dict) and \
            cfg['pixel_decoder'].get('pretrained') is not None:
        cfg['pixel_decoder'] = dict(cfg['pixel_decoder'], pretrained=None)
    if cfg.get('text_processor') is None:
        raise ValueError('the model config has no text_processor; load the config with '
                         'pixellm.utils.load_config, which hands it the config\'s text_processor')
    text = dict(cfg['text_processor'])
    tokenizer = dict(text['tokenizer'])
    if tokenizer.get('type') != 'TinyTokenizer':
        vocab = cfg['llm']['llm_config']['vocab_size']
        from pixellm.text.tokenizers import build_tokenizer
        tiny_vocab = len(build_tokenizer(dict(type='TinyTokenizer')))
        text['tokenizer'] = dict(
            type='TinyTokenizer', model_max_length=tokenizer.get('model_max_length', 512),
            extra_tokens=[f'<filler_{i}>' for i in range(vocab - tiny_vocab)])
    cfg['text_processor'] = text
    return cfg


def build_random_init(model_cfg: Dict, seed: int = 0) -> torch.nn.Module:
    """Build a model config at full size with random weights, never reading ``pretrained``.

    Args:
        model_cfg (dict): A PixelLM model config; its ``pretrained`` names may point anywhere
            (they are dropped, see :func:`offline_model_cfg`).
        seed (int): Seed of the random initialisation. Defaults to 0.

    Returns:
        torch.nn.Module: The model, on the CPU, with the config's dtypes and trainable flags.
    """
    torch.manual_seed(seed)
    return MODELS.build(offline_model_cfg(model_cfg))


def build_on_meta(model_cfg: Dict) -> torch.nn.Module:
    """Build a model config on the ``meta`` device: full architecture, no memory for weights."""
    with torch.device('meta'):
        return MODELS.build(offline_model_cfg(model_cfg))


def count_parameters(model: torch.nn.Module) -> Tuple[int, int]:
    """Return ``(total, trainable)`` parameter counts (shared tensors counted once)."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable
