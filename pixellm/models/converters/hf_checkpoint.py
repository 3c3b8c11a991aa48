"""Read Hugging Face checkpoint weights: folder or file, sharded or not, .bin or .safetensors."""
import json
import os.path as osp
from typing import Callable, Dict, List, Optional

import torch

# Looked for in this order in a checkpoint folder: safetensors first, as transformers does.
_INDEX_FILES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')
_SINGLE_FILES = ('model.safetensors', 'pytorch_model.bin')


def checkpoint_files(path: str) -> List[str]:
    """The weight files of a checkpoint.

    Args:
        path (str): A folder written by ``save_pretrained`` (with or without a shard index), or
            one ``.safetensors`` / ``.bin`` / ``.pth`` file.

    Returns:
        list[str]: The files, in shard order.

    Raises:
        FileNotFoundError: ``path`` holds no weights that this function knows how to find.
    """
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'checkpoint {path!r} is neither a file nor a folder')
    for name in _INDEX_FILES:
        index = osp.join(path, name)
        if osp.isfile(index):
            with open(index) as f:
                weight_map = json.load(f).get('weight_map')
            if not weight_map:
                raise ValueError(f'{index} has no "weight_map"')
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not osp.isfile(osp.join(path, f))]
            if missing:
                raise FileNotFoundError(f'{index} names shard(s) {missing} that are not in '
                                        f'{path!r}; is the download complete?')
            return [osp.join(path, f) for f in files]
    for name in _SINGLE_FILES:
        if osp.isfile(osp.join(path, name)):
            return [osp.join(path, name)]
    raise FileNotFoundError(f'{path!r} holds none of {list(_INDEX_FILES + _SINGLE_FILES)}')


def _load_file(filename: str, select: Optional[Callable[[str], bool]]) -> Dict[str, torch.Tensor]:
    if filename.endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(filename, framework='pt', device='cpu') as f:
            return {k: f.get_tensor(k) for k in f.keys() if select is None or select(k)}
    try:
        # mmap keeps a 7B shard on disk until a tensor is read.
        state = torch.load(filename, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError as err:
        if 'mmap' not in str(err):  # legacy (pre zip) format files cannot be memory-mapped
            raise
        state = torch.load(filename, map_location='cpu', weights_only=True)
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    if not isinstance(state, dict):
        raise ValueError(f'{filename} holds a {type(state).__name__}, not a state dict')
    return {k: v for k, v in state.items() if select is None or select(k)}


def load_hf_state_dict(path: str,
                       select: Optional[Callable[[str], bool]] = None) -> Dict[str, torch.Tensor]:
    """Load every (or every selected) tensor of a checkpoint on the CPU.

    Args:
        path (str): See :func:`checkpoint_files`.
        select (Callable[[str], bool], optional): Keep only the keys it accepts (a safetensors
            file then reads only those tensors).

    Returns:
        dict[str, Tensor]: The tensors by key.

    Raises:
        ValueError: A key appears in two shards.
    """
    state: Dict[str, torch.Tensor] = {}
    for filename in checkpoint_files(path):
        part = _load_file(filename, select)
        twice = sorted(set(part) & set(state))
        if twice:
            raise ValueError(f'{filename} repeats key(s) of an earlier shard: {twice[:5]}')
        state.update(part)
    return state


def read_hf_config(path: str) -> Dict:
    """The ``config.json`` next to a checkpoint, or ``{}`` if there is none.

    Args:
        path (str): A checkpoint folder or a file inside one.

    Returns:
        dict: The parsed config.
    """
    folder = path if osp.isdir(path) else osp.dirname(path)
    config = osp.join(folder, 'config.json')
    if not osp.isfile(config):
        return {}
    with open(config) as f:
        return json.load(f)
