"""Save the Python/numpy/torch random states in checkpoints and restore them on resume.

Facts about mmengine 0.10.7 that make this necessary:

* ``Runner.save_checkpoint`` stores model, optimizer, schedulers, message hub and meta, but no
  random state; ``Runner.resume`` only re-seeds when the checkpoint's seed differs from the
  config's. After a resume, dropout masks and random augmentations therefore differ from an
  uninterrupted run.
* ``IterBasedTrainLoop.run`` restores the data position itself: after ``before_train_epoch`` it
  calls ``next(self.dataloader_iterator)`` ``iter`` times, loading (and transforming) every
  consumed batch, so a seeded ``InfiniteSampler``/``DefaultSampler`` continues where it stopped.
  That skip also consumes random numbers, and no hook runs between the skip and the first new
  batch, so the state is restored by a thin wrapper around ``dataloader_iterator`` that restores
  it just before that batch is drawn.
* ``EpochBasedTrainLoop`` resumes at epoch boundaries (``DistSamplerSeedHook`` sets the sampler
  epoch); the state is restored in ``before_train_epoch``, before the epoch's dataloader iterator
  is created. A checkpoint saved in the middle of an epoch restarts that epoch in mmengine, so it
  cannot be resumed exactly; a warning says so.
* Validation draws random numbers too (creating a dataloader iterator draws its base seed), and in
  ``IterBasedTrainLoop`` it runs after the checkpoint of the same iteration is saved. This hook
  puts the random state back after every validation, so the training stream is the same whether or
  not (and how often) the model is validated, and the saved state is the one training continues
  from.

With ``num_workers > 0`` the worker processes are seeded by mmengine's ``worker_init_fn`` and see
the same batches during the skip, so they resume in step as well. In distributed runs only rank
0 writes the checkpoint; every rank restores rank 0's state, which matches uninterrupted training
when ranks share one seed (mmengine's default ``diff_rank_seed=False``).
"""
import random
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook

from pixellm.registry import HOOKS
from .grad_digest_hook import numerics_context

CHECKPOINT_KEY = 'rng_state'


def capture_rng_state() -> Dict[str, Any]:
    """The current Python, numpy, torch CPU (and, if initialised, CUDA) random states.

    Returns:
        dict: ``python``, ``numpy``, ``torch`` and optionally ``cuda`` states.
    """
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    # Querying CUDA in a CPU-only run would initialise it; an unused device has nothing to save.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Set the random states captured by :func:`capture_rng_state`.

    Args:
        state (dict): A dict from :func:`capture_rng_state`, possibly after a save/load round trip
            (tensors may have been mapped to a GPU, tuples may have become lists).
    """
    python_state = state['python']
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np.random.set_state(tuple(state['numpy']))
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())


class _RestoreAfterSkip:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator`` during the resume skip.

    Passes the first ``skip`` ``next`` calls through, then restores the random state, puts the
    real iterator back on the loop and returns the first new batch.
    """

    def __init__(self, loop: Any, iterator: Iterator, skip: int,
                 restore: Callable[[], None]) -> None:
        self._loop = loop
        self._iterator = iterator
        self._skip = skip
        self._restore = restore

    def __iter__(self) -> '_RestoreAfterSkip':
        return self

    def __next__(self) -> Any:
        if self._skip > 0:
            self._skip -= 1
            return next(self._iterator)
        self._restore()
        self._loop.dataloader_iterator = self._iterator
        return next(self._iterator)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Make a resumed run draw the same random numbers as an uninterrupted one.

    Adds ``checkpoint['rng_state']`` when a checkpoint is saved and restores it when training
    resumes from such a checkpoint, at the point where the uninterrupted run would continue. A
    checkpoint loaded with ``load_from`` (fine-tuning, not resuming) leaves the random state alone.
    Also isolates the training random stream from validation (see the module docstring), and
    records the process's numerics settings (:func:`numerics_context`: the intra-op thread count
    above all) so that a resume under other settings, which cannot be bit-equal, says so.
    """

    # Before other hooks' ``before_train_epoch``/``before_val``, so none of them draws first.
    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._pending: Optional[Dict[str, Any]] = None
        self._pending_iter: Optional[int] = None
        self._val_stash: Optional[Dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Store the random state training continues from.

        Args:
            runner (Runner): The runner.
            checkpoint (dict): The checkpoint about to be written.
        """
        # A best checkpoint is written inside validation; training continues from the state
        # validation started with, which after_val puts back.
        state = self._val_stash if self._val_stash is not None else capture_rng_state()
        checkpoint[CHECKPOINT_KEY] = dict(state, world_size=get_world_size(),
                                          numerics=numerics_context())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the saved state until training reaches the point where it applies.

        Args:
            runner (Runner): The runner.
            checkpoint (dict): The loaded checkpoint.
        """
        self._pending = checkpoint.get(CHECKPOINT_KEY)
        self._pending_iter = checkpoint.get('meta', {}).get('iter')
        if self._pending is None:
            runner.logger.warning(
                'RNGStateHook: the checkpoint has no random state (written without this hook); '
                'a resumed run will not repeat the random draws of an uninterrupted one.')
            return
        saved = self._pending.get('numerics') or {}
        changed = [f'{key} {saved[key]} -> {value}' for key, value in numerics_context().items()
                   if key in saved and saved[key] != value]
        if changed:
            runner.logger.warning(
                'RNGStateHook: the checkpoint was written with other numerics settings ('
                + ', '.join(changed) + '); sums split and round differently, so the resumed run '
                'will not be bit-equal to an uninterrupted one (set OMP_NUM_THREADS to match).')

    def before_train_epoch(self, runner) -> None:
        """Restore the saved state (first epoch after a resume only).

        Args:
            runner (Runner): The runner.
        """
        if self._pending is None:
            return
        state, saved_iter = self._pending, self._pending_iter
        self._pending = self._pending_iter = None
        # load_from leaves the loop at iteration 0; only a resume moves it to the saved iteration.
        if saved_iter is None or saved_iter == 0 or runner.iter != saved_iter:
            return
        if state.get('world_size', 1) != get_world_size() or get_world_size() > 1:
            runner.logger.info(
                f'RNGStateHook: restoring the random state saved by rank 0 of '
                f'{state.get("world_size", 1)} process(es) on rank {get_rank()} of '
                f'{get_world_size()}.')
            if (runner.cfg.get('randomness') or {}).get('diff_rank_seed'):
                runner.logger.warning(
                    'RNGStateHook: randomness.diff_rank_seed=True, but the checkpoint holds '
                    "rank 0's state only; after the resume all ranks share it.")
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator'):
            loop.dataloader_iterator = _RestoreAfterSkip(
                loop, loop.dataloader_iterator, loop.iter, lambda: restore_rng_state(state))
            return
        dataloader = getattr(loop, 'dataloader', None)
        if dataloader is not None and runner.iter != runner.epoch * len(dataloader):
            runner.logger.warning(
                f'RNGStateHook: the checkpoint was saved at iteration {runner.iter}, inside epoch '
                f'{runner.epoch + 1}; mmengine restarts that epoch from its first batch, so the '
                'resumed run cannot repeat the uninterrupted one exactly.')
        restore_rng_state(state)

    def before_val(self, runner) -> None:
        """Remember the random state validation starts from.

        Args:
            runner (Runner): The runner.
        """
        self._val_stash = capture_rng_state()

    def after_val(self, runner) -> None:
        """Put back the random state validation started from.

        Args:
            runner (Runner): The runner.
        """
        if self._val_stash is not None:
            restore_rng_state(self._val_stash)
            self._val_stash = None
