"""Write a trained PixelLM as a Hugging Face style folder, and build PixelLM back from one.

Folder layout (``FORMAT_VERSION`` 1), as written by :func:`export_pixellm`::

    OUT_DIR/
      llm/                      a plain transformers folder, loadable without pixellm:
        config.json               AutoModelForCausalLM.from_pretrained('OUT_DIR/llm') and
        generation_config.json    AutoTokenizer.from_pretrained('OUT_DIR/llm'). LoRA is merged
        model*.safetensors        into the weights; the rows of the tokens PixelLM added (the
        tokenizer.json            codebook tokens, <im_start>/<im_end>) are part of the
        tokenizer_config.json     embedding table and LM head, and of the tokenizer.
      pixellm.safetensors       every other weight of the toolbox model (vision encoder,
                                projectors, pixel decoder...), under its state-dict name
      pixellm_config.json       the toolbox model config that rebuilds PixelLM from the folder
                                (key ``model``), the token ids, the LLM dtype and the source files

In ``pixellm_config.json`` the model config names the LLM folder relatively
(``model.llm.pretrained`` and ``model.text_processor.tokenizer.name_or_path`` are ``"llm"``), so
the folder can be moved; the LLM is an ``HFCausalLM`` without LoRA whose ``base_vocab_size`` splits the added rows
off again (trainable, as in training), and the vision encoder is built from its stored
``vision_config`` instead of a hub name (a ``TimmVisionEncoder`` from its ``model_name`` with
``pretrained=False``), so nothing is downloaded.

Loading it back:

* Python: ``pixellm.models.load_exported(OUT_DIR)`` returns the PixelLM with all its weights.
* A config: ``model = dict(type='ExportedPixelLM', folder=OUT_DIR)`` (the model type is
  :func:`load_exported`); from the command line, any config with ``--cfg-options
  model._delete_=True model.type=ExportedPixelLM model.folder=OUT_DIR``. The model holds all its
  weights, so the runner loads nothing (``load_from=None``).
* transformers alone (text only): ``AutoModelForCausalLM.from_pretrained('OUT_DIR/llm')`` and
  ``AutoTokenizer.from_pretrained('OUT_DIR/llm')``.

The saved tokenizer is the training one, so a config's ``text_processor`` may keep the training
tokenizer or use ``dict(type='PretrainedTokenizer', name_or_path='OUT_DIR/llm')``: both give the
same ids.
"""
import json
import os
import os.path as osp
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file
from torch import nn

from pixellm.registry import MODELS
from pixellm.version import __version__
from .llms import HFCausalLM
from .vision_encoders import CLIPVisionEncoder, TimmVisionEncoder

FORMAT = 'pixellm-hf-export'
FORMAT_VERSION = 1
CONFIG_FILE = 'pixellm_config.json'
WEIGHTS_FILE = 'pixellm.safetensors'
LLM_DIR = 'llm'
# Prefix of the state-dict keys that live in the llm/ folder instead of pixellm.safetensors.
LLM_PREFIX = 'llm.'
# How many keys of each kind a mismatch message lists before "and N more".
_SHOWN_KEYS = 8
# Tokenizer options carried over from the training config; the rest (hub revision, extra tokens)
# is already in the saved tokenizer.
_TOKENIZER_KEYS = ('use_im_start_end', 'model_max_length', 'padding_side')
# LLM options that describe where the weights came from or how they were adapted; the exported
# folder replaces all of them.
_LLM_SOURCE_KEYS = ('pretrained', 'llm_config', 'lora', 'torch_dtype', 'base_vocab_size',
                    'quantization', 'init_cfg')


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model built from the config.

    Args:
        source (str): What was loaded (a file name), for the message.
        missing (list[str]): Keys the model has and the state dict lacks.
        unexpected (list[str]): Keys the state dict has and the model lacks.
        wrong_shape (list[tuple]): ``(key, state-dict shape, model shape)``.
        hint (str): A last sentence saying what to do. Defaults to ''.
    """

    def __init__(self, source: str, missing: Sequence[str], unexpected: Sequence[str],
                 wrong_shape: Sequence[Tuple[str, tuple, tuple]], hint: str = '') -> None:
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.wrong_shape = list(wrong_shape)
        lines = [f'{source} does not match the model built from the config:']
        if self.missing:
            lines.append(f'  {len(self.missing)} key(s) of the model missing from it: '
                         f'{_some(self.missing)}')
        if self.unexpected:
            lines.append(f'  {len(self.unexpected)} key(s) in it that the model does not have: '
                         f'{_some(self.unexpected)}')
        if self.wrong_shape:
            shapes = [f'{key} (file {tuple(got)}, model {tuple(want)})'
                      for key, got, want in self.wrong_shape]
            lines.append(f'  {len(shapes)} key(s) with another shape: {_some(shapes)}')
        if hint:
            lines.append(hint)
        super().__init__('\n'.join(lines))


def _some(items: Sequence[str]) -> str:
    shown = ', '.join(items[:_SHOWN_KEYS])
    more = len(items) - _SHOWN_KEYS
    return shown + (f' and {more} more' if more > 0 else '')


def check_state_dict(model_state: Mapping[str, torch.Tensor],
                     state: Mapping[str, torch.Tensor], source: str, hint: str = '') -> None:
    """Raise unless ``state`` has exactly the keys of ``model_state``, with the same shapes.

    Args:
        model_state (Mapping[str, Tensor]): The state dict (or the part of it) to fill.
        state (Mapping[str, Tensor]): The loaded state dict.
        source (str): What was loaded, e.g. ``"Checkpoint 'iter_5000.pth'"``.
        hint (str): Last line of the error message. Defaults to ''.

    Raises:
        CheckpointMismatchError: Keys missing, unexpected or of another shape, all listed.
    """
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    wrong_shape = [(key, tuple(state[key].shape), tuple(model_state[key].shape))
                   for key in sorted(set(state) & set(model_state))
                   if tuple(state[key].shape) != tuple(model_state[key].shape)]
    if missing or unexpected or wrong_shape:
        raise CheckpointMismatchError(source, missing, unexpected, wrong_shape, hint)


def load_training_checkpoint(model: nn.Module, checkpoint: str,
                             trusted: Optional[bool] = None) -> Dict[str, Any]:
    """Load a checkpoint written by ``tools/train.py`` into ``model``, every key strictly.

    The file is read with :func:`pixellm.engine.load_checkpoint_safely` (allow-listed unpickling
    unless ``trusted``); a leading ``module.`` (a wrapped model's state dict) is stripped.

    Args:
        model (nn.Module): The model built from the checkpoint's config.
        checkpoint (str): The ``.pth`` file: an mmengine checkpoint (``state_dict`` key) or a
            bare state dict.
        trusted (bool, optional): See :func:`~pixellm.engine.load_checkpoint_safely`.

    Returns:
        dict: The checkpoint's ``meta`` (empty for a bare state dict).

    Raises:
        CheckpointMismatchError: The checkpoint does not fit ``model``; the message names the
            keys.
    """
    # Imported here: pixellm.engine imports the datasets, which must not load with the models.
    from pixellm.engine.checkpoint import load_checkpoint_safely
    loaded = load_checkpoint_safely(checkpoint, map_location='cpu', trusted=trusted)
    state = loaded.get('state_dict', loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f'Checkpoint {checkpoint!r} holds no state dict (a dict of tensors, '
                         'alone or under "state_dict")')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    check_state_dict(model.state_dict(), state, f'Checkpoint {checkpoint!r}',
                     hint='Use the config (and --cfg-options) the checkpoint was trained with.')
    model.load_state_dict(state, strict=True)
    meta = loaded.get('meta') if isinstance(loaded, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as JSON types; classes and functions named as types become their names."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f'{where}.{k}') for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f'{where}[{i}]') for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if where.endswith('.type') and isinstance(getattr(value, '__name__', None), str):
        # Lazy configs give `type` as the imported class; registries know it by name.
        return value.__name__
    raise TypeError(f'model config entry {where} = {value!r} cannot be written to '
                    f'{CONFIG_FILE}; give it as plain data (str, number, list, dict)')


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def _exported_model_cfg(model_cfg: Mapping, model: nn.Module, base_vocab_size: int,
                        llm_dtype: torch.dtype) -> Dict[str, Any]:
    """The training model config, rewritten to build the same PixelLM from the folder."""
    cfg = _jsonable(model_cfg, 'model')
    cfg.pop('init_cfg', None)  # the weights come from the folder, nothing to initialise
    llm = {k: v for k, v in cfg['llm'].items() if k not in _LLM_SOURCE_KEYS}
    model_type = (cfg['llm'].get('llm_config') or {}).get('model_type', 'llama')
    # The folder's tables are in llm_dtype; nothing is trained from it unless a config says so.
    llm.update(pretrained=LLM_DIR, llm_config=dict(model_type=model_type),
               torch_dtype=_dtype_name(llm_dtype), lora=None, base_vocab_size=base_vocab_size,
               train_token_tables=False)
    cfg['llm'] = llm
    text = cfg['text_processor']
    tokenizer = text['tokenizer']
    kept = {k: tokenizer[k] for k in _TOKENIZER_KEYS if k in tokenizer}
    text['tokenizer'] = dict(type='PretrainedTokenizer', name_or_path=LLM_DIR, **kept)
    encoder = cfg['vision_encoder']
    if isinstance(model.vision_encoder, CLIPVisionEncoder):
        # Rebuilt from its (already resized) config, without a download; the weights, in their
        # trained dtype, come from pixellm.safetensors.
        vision_config = model.vision_encoder.config.to_diff_dict()
        vision_config.pop('transformers_version', None)
        encoder.update(pretrained=None, vision_config=_jsonable(vision_config, 'vision_config'),
                       image_size=None)
        encoder.pop('torch_dtype', None)
        encoder.pop('init_cfg', None)
    elif isinstance(model.vision_encoder, TimmVisionEncoder):
        # model_name and model_kwargs give the architecture; the weights, in their trained dtype,
        # come from pixellm.safetensors, so nothing is downloaded or read from checkpoint_path.
        encoder.update(pretrained=False, checkpoint_path=None,
                       image_size=model.vision_encoder.image_size)
        encoder.pop('torch_dtype', None)
        encoder.pop('init_cfg', None)
    return cfg


def _unshared(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Contiguous CPU tensors, no two sharing memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone()
        seen.add(storage)
        out[key] = tensor
    return out


def export_pixellm(model: nn.Module, model_cfg: Mapping, out_dir: str,
                   dtype: Optional[Union[str, torch.dtype]] = None,
                   source: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write ``model`` as an exported folder (layout in the module docstring).

    The model is changed in place: LoRA is merged (:meth:`HFCausalLM.merge_lora`), the added
    token rows are folded into the LLM's tables (:meth:`HFCausalLM.fold_added_rows`) and the LLM
    is cast to ``dtype``; it computes the same outputs afterwards, up to rounding.

    Args:
        model (nn.Module): A :class:`PixelLM` whose ``llm`` is an ``HFCausalLM``, with the
            trained weights loaded.
        model_cfg (Mapping): The config ``model`` was built from (``cfg.model``).
        out_dir (str): Output folder; must not exist or be empty.
        dtype (str | torch.dtype, optional): dtype of the exported LLM weights, e.g.
            ``'bfloat16'``. None keeps the LLM's dtype. The other parts keep their trained dtypes.
        source (Mapping, optional): Provenance recorded in ``pixellm_config.json`` (config and
            checkpoint paths...).

    Returns:
        dict: The content written to ``pixellm_config.json``.
    """
    if not isinstance(getattr(model, 'llm', None), HFCausalLM):
        raise TypeError(f'export_pixellm needs a model whose llm is an HFCausalLM, got '
                        f'{type(getattr(model, "llm", None)).__name__}')
    if osp.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f'export folder {out_dir!r} is not empty')
    llm, tokenizer = model.llm, model.tokenizer
    base_vocab_size = llm.base_vocab_size
    if llm.vocab_size != len(tokenizer):
        raise ValueError(f'the LLM has {llm.vocab_size} token rows but the tokenizer has '
                         f'{len(tokenizer)} tokens')
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    llm_dtype = dtype or llm.compute_dtype
    # Written last, but built first: a config that cannot be stored stops before any work.
    exported_cfg = _exported_model_cfg(model_cfg, model, base_vocab_size, llm_dtype)
    llm.merge_lora()
    llm.fold_added_rows()
    hf = llm.hf_model
    hf.to(llm_dtype)
    # A standalone transformers user generates with the cache and the tokenizer's special ids
    # (the official merge script writes the same ids).
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    hf.config.use_cache = True
    for target in (hf.config, getattr(hf, 'generation_config', None)):
        if target is not None:
            for key, value in special.items():
                setattr(target, key, value)

    llm_dir = osp.join(out_dir, LLM_DIR)
    hf.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    parts = {k: v for k, v in model.state_dict().items() if not k.startswith(LLM_PREFIX)}
    save_file(_unshared(parts), osp.join(out_dir, WEIGHTS_FILE), metadata=dict(format='pt'))

    info = dict(
        format=FORMAT, format_version=FORMAT_VERSION, pixellm_version=__version__,
        llm_dir=LLM_DIR, weights=WEIGHTS_FILE,
        model=exported_cfg,
        llm_dtype=_dtype_name(llm_dtype), llm_base_vocab_size=base_vocab_size,
        vocab_size=len(tokenizer),
        added_tokens={t: base_vocab_size + i for i, t in enumerate(
            tokenizer.convert_ids_to_tokens(list(range(base_vocab_size, len(tokenizer)))))},
        codebook_tokens=list(model.codebook.tokens),
        codebook_token_ids=list(model.codebook.token_ids),
        source=_jsonable(dict(source or {}), 'source'))
    with open(osp.join(out_dir, CONFIG_FILE), 'w', encoding='utf-8') as f:
        json.dump(info, f, indent=2)
        f.write('\n')
    return info


def read_export_info(folder: str) -> Dict[str, Any]:
    """Read ``pixellm_config.json`` of an exported folder, with its folder paths made absolute.

    Args:
        folder (str): The exported folder.

    Returns:
        dict: The file's content; ``model`` is ready for ``MODELS.build``.

    Raises:
        FileNotFoundError: ``folder`` has no ``pixellm_config.json``.
        ValueError: The file is not a pixellm export of a version this code reads.
    """
    path = osp.join(folder, CONFIG_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path!r} does not exist; is {folder!r} a folder written by '
                                'tools/model_converters/export_hf.py?')
    with open(path, encoding='utf-8') as f:
        info = json.load(f)
    if info.get('format') != FORMAT or info.get('format_version') != FORMAT_VERSION:
        raise ValueError(f'{path!r} is format {info.get("format")!r} version '
                         f'{info.get("format_version")!r}; this pixellm reads {FORMAT!r} '
                         f'version {FORMAT_VERSION}')
    llm_dir = osp.join(osp.abspath(folder), info['llm_dir'])
    model = info['model']
    if 'text_processor' not in model:
        # A folder written before the text processor held these three keys in the model.
        model['text_processor'] = dict(
            type='TextProcessor', tokenizer=model.pop('tokenizer'),
            codebook=dict(model.pop('codebook', dict(type='SegCodebook')),
                          num_scales=len(model['vision_encoder'].get('select_layers', (-2, -11)))),
            use_im_start_end=model.pop('use_im_start_end', False))
    model['llm']['pretrained'] = llm_dir
    model['text_processor']['tokenizer']['name_or_path'] = llm_dir
    return info


def load_exported(folder: str, overrides: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Build the PixelLM stored in an exported folder, with all its weights.

    Registered as the model type ``ExportedPixelLM``, so a config switches to an exported folder
    with ``model = dict(type='ExportedPixelLM', folder='work_dirs/pixellm_hf')``.

    Args:
        folder (str): A folder written by :func:`export_pixellm`.
        overrides (Mapping, optional): Model config entries to change, with dotted keys as in
            ``--cfg-options``, e.g. ``{'max_new_tokens': 256,
            'llm.attn_implementation': 'eager'}``. Defaults to None.

    Returns:
        PixelLM: The model in eval mode, marked initialised so that a runner does not
        re-initialise the loaded weights.

    Raises:
        CheckpointMismatchError: ``pixellm.safetensors`` does not fit the model.
        ValueError: The rebuilt tokenizer does not give the exported token ids.
    """
    info = read_export_info(folder)
    cfg = info['model']
    if overrides:
        merged = Config(dict(model=cfg))
        merged.merge_from_dict({f'model.{k}': v for k, v in overrides.items()})
        cfg = merged.to_dict()['model']
    model = MODELS.build(cfg)
    if list(model.codebook.token_ids) != list(info['codebook_token_ids']) or \
            model.llm.vocab_size != info['vocab_size']:
        raise ValueError(
            f'the model rebuilt from {folder!r} has codebook ids {model.codebook.token_ids} and '
            f'{model.llm.vocab_size} token rows, but the export has '
            f'{info["codebook_token_ids"]} and {info["vocab_size"]}; do not override the '
            'tokenizer or the codebook')
    weights = osp.join(folder, info['weights'])
    state = load_file(weights)
    wanted = {k: v for k, v in model.state_dict().items() if not k.startswith(LLM_PREFIX)}
    check_state_dict(wanted, state, f'Weights file {weights!r}',
                     hint='Overrides may change settings, not the shapes of the exported parts.')
    # assign=True keeps the stored dtypes (e.g. a bfloat16 CLIP rebuilt from its config in
    # float32) and the module's requires_grad flags.
    model.load_state_dict(state, strict=False, assign=True)
    model.is_init = True
    return model.eval()


MODELS.register_module(name='ExportedPixelLM', module=load_exported)
