"""A ``CheckpointHook`` whose checkpoints and ``last_checkpoint`` survive a kill during saving."""
import os.path as osp
from typing import Any, Dict, List

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook

from pixellm.registry import HOOKS
from ..checkpoint import ATOMIC_BACKEND_NAME, atomic_write_text, remove_stale_tmp_files


class _DeferredRemovals:
    """Wraps a file backend so that ``remove``/``rmtree`` wait until :meth:`flush`."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._pending: List[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def remove(self, filepath: str) -> None:
        self._pending.append(filepath)

    def rmtree(self, dir_path: str) -> None:
        self._pending.append(dir_path)

    def flush(self, keep: List[str]) -> None:
        for path in self._pending:
            # mmengine removes the old best before writing the new one; if both have the same
            # name the "old" path is now the new file.
            if path in keep:
                continue
            if self._backend.isfile(path):
                self._backend.remove(path)
            elif self._backend.isdir(path):
                self._backend.rmtree(path)
        self._pending = []


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` made crash-safe for local checkpoint directories.

    mmengine 0.10.7 writes a checkpoint by opening its final path and writing into it, writes
    ``last_checkpoint`` the same way, and deletes the checkpoints beyond ``max_keep_ckpts`` (and
    the previous best checkpoint) *before* writing the new one; a kill in between loses the only
    good checkpoint. This hook:

    * routes every checkpoint write through the ``'pixellm_atomic_local'`` file backend
      (temporary file in the same directory, fsync, ``os.replace``);
    * writes ``last_checkpoint`` the same way, after the checkpoint it names is complete;
    * deletes outdated and previous-best checkpoints only after the new one is written;
    * removes temporary files left by a killed process when training starts.

    Remote ``out_dir``s (a URI prefix or explicit ``backend_args``/``file_client_args``) keep
    mmengine's behaviour. Arguments are those of ``mmengine.hooks.CheckpointHook``.

    Args:
        *args: Positional arguments of ``CheckpointHook``.
        **kwargs: Keyword arguments of ``CheckpointHook`` (``interval``, ``by_epoch``,
            ``max_keep_ckpts``, ``save_best``, ...).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.atomic = False

    def before_train(self, runner) -> None:
        """Choose the atomic backend for a local ``out_dir`` and clean up killed writes.

        Args:
            runner (Runner): The runner.
        """
        out_dir = self.out_dir if self.out_dir is not None else runner.work_dir
        explicit_backend = self.backend_args is not None or self.file_client_args is not None
        self.atomic = (not explicit_backend
                       and isinstance(get_file_backend(out_dir), LocalBackend))
        if self.atomic:
            self.backend_args = dict(backend=ATOMIC_BACKEND_NAME)
        else:
            runner.logger.warning(
                f'AtomicCheckpointHook: {out_dir!r} is not a local directory or has explicit '
                'backend arguments; checkpoints are written by the backend as in mmengine.')
        super().before_train(runner)
        if self.atomic and is_main_process():
            for path in remove_stale_tmp_files(self.out_dir) + remove_stale_tmp_files(
                    runner.work_dir):
                runner.logger.info(f'Removed {path} left by an interrupted checkpoint write.')

    def _save_checkpoint_with_step(self, runner, step: int, meta: Dict) -> None:
        if not self.atomic:
            return super()._save_checkpoint_with_step(runner, step, meta)
        # The bookkeeping is mmengine's (the saved message hub must already list this step);
        # only the deletion of the outdated checkpoint moves after the write.
        outdated = []
        if self.max_keep_ckpts > 0 and not (len(self.keep_ckpt_ids) > 0
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        # runner.save_checkpoint is master-only: other ranks have nothing to publish or delete.
        if not is_main_process():
            return
        atomic_write_text(self.last_ckpt, osp.join(runner.work_dir, 'last_checkpoint'))
        for old_step in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old_step))
            if path == self.last_ckpt:
                continue
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)

    def _save_best_checkpoint(self, runner, metrics: Dict) -> None:
        if not self.atomic:
            return super()._save_best_checkpoint(runner, metrics)
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        # Only one of the two exists, depending on the number of key indicators.
        best_paths = [getattr(self, 'best_ckpt_path', None),
                      *getattr(self, 'best_ckpt_path_dict', {}).values()]
        keep = [p for p in [self.last_ckpt, *best_paths] if p]
        deferred.flush(keep)
