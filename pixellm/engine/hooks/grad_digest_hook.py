"""Record a digest of every gradient and weight at each optimizer step, to find where two runs part.

Two runs of one config that should be bit-identical (two processes, or an uninterrupted run and an
interrupted and resumed one) can be compared step by step: the first step whose gradients differ
names the parameters where the computation first went another way, and identical gradients with
different weights point at the optimizer or the resume. ``tools/analysis/check_determinism.py``
runs a config several times with this hook and compares the records.
"""
import hashlib
import json
import os.path as osp
from typing import Any, Dict, Iterator, Tuple

import torch
from mmengine.hooks import Hook

from pixellm.registry import HOOKS


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's dtype, shape and bytes (equal hashes mean bit-equal tensors).

    Args:
        tensor (torch.Tensor): Any tensor; it is copied to the CPU.

    Returns:
        str: 16 hex digits.
    """
    data = tensor.detach().cpu().contiguous()
    digest = hashlib.sha1(f'{data.dtype}{tuple(data.shape)}'.encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b'')
    return digest.hexdigest()[:16]


def numerics_context() -> Dict[str, Any]:
    """What decides how floating-point work is split and rounded in this process.

    A change in any of these (the intra-op thread count above all: CPU reductions and matmuls
    split their sums by thread) can change results in the last bits.

    Returns:
        dict: ``torch`` version, intra-op ``threads``, ATen ``cpu_capability``, whether
        deterministic algorithms are on, and the ``cuda`` device name when CUDA is initialised.
    """
    context = dict(torch=str(torch.__version__), threads=torch.get_num_threads(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   deterministic=torch.are_deterministic_algorithms_enabled())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        context['cuda'] = torch.cuda.get_device_name()
    return context


@HOOKS.register_module()
class GradDigestHook(Hook):
    """Append one JSON line per optimizer step with a digest of each trained weight and gradient.

    The line is written just before the optimizer updates the weights (a step pre-hook on the
    optimizer, so gradient accumulation writes one line per update): ``{"iter": i, "weights":
    {name: digest}, "grads": {name: digest}}`` with ``i`` counted from 1, the weights as they were
    before that update. The first line of each process holds :func:`numerics_context`, and after
    training a line ``{"final": {name: digest}}`` holds the trained weights. A resumed run that
    writes into the same work dir appends to the same file.

    Works with mmengine's ``OptimWrapper`` and ``OptimWrapperDict`` (not DeepSpeed or FSDP, whose
    gradients are sharded across processes).

    Args:
        out_file (str): File name, relative to the run's work dir. Defaults to
            ``'grad_digests.jsonl'``.
    """

    priority = 'LOWEST'

    def __init__(self, out_file: str = 'grad_digests.jsonl') -> None:
        self.out_file = out_file
        self._path = None
        self._handles = []

    def _named_trained(self, runner) -> Iterator[Tuple[str, torch.nn.Parameter]]:
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        return ((name, p) for name, p in model.named_parameters() if p.requires_grad)

    def _write(self, record: Dict[str, Any]) -> None:
        with open(self._path, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def before_train(self, runner) -> None:
        """Hook the optimizer(s) and write the process's numerics context.

        Args:
            runner (Runner): The runner.

        Raises:
            TypeError: The optimizer wrapper holds no plain torch optimizer (DeepSpeed, FSDP).
        """
        wrapper = runner.optim_wrapper
        wrappers = list(wrapper.values()) if hasattr(wrapper, 'values') else [wrapper]
        optimizers = [getattr(w, 'optimizer', None) for w in wrappers]
        if not all(isinstance(opt, torch.optim.Optimizer) for opt in optimizers) or \
                type(wrapper).__name__ == 'DeepSpeedOptimWrapper':
            raise TypeError(f'GradDigestHook needs an OptimWrapper around a torch optimizer, '
                            f'not {type(wrapper).__name__}')
        self._path = osp.join(runner.work_dir, self.out_file)
        self._write(dict(numerics=numerics_context(), start_iter=runner.iter))
        # With several optimizers (OptimWrapperDict) all gradients exist before the first steps.
        self._handles.append(optimizers[0].register_step_pre_hook(
            lambda *_: self._record_step(runner)))

    def _record_step(self, runner) -> None:
        named = list(self._named_trained(runner))
        self._write(dict(
            iter=runner.iter + 1,
            weights={name: tensor_digest(p) for name, p in named},
            grads={name: tensor_digest(p.grad) for name, p in named if p.grad is not None}))

    def after_train(self, runner) -> None:
        """Write the trained weights' digests and unhook the optimizer(s).

        Args:
            runner (Runner): The runner.
        """
        self._write(dict(final={name: tensor_digest(p) for name, p in self._named_trained(runner)}))
        for handle in self._handles:
            handle.remove()
        self._handles = []
