"""For the distributed engine tests: a per-rank loss recorder and a toy model whose initial weights
do not depend on when the runner builds it and whose layers are its FSDP units."""
import json
import os.path as osp
from typing import Any, Dict, Optional, Tuple

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from pixellm_engine_toy import EngineToyModel

from pixellm.registry import HOOKS, MODELS


@HOOKS.register_module(force=True)
class LossRecordHook(Hook):
    """Append ``{"iter": i, "loss": x}`` lines to ``<work_dir>/losses_rank<R>.jsonl``.

    Each rank writes its own loss (mmengine logs rank 0's only); a resumed run appends to the
    same file, so the file shows which iterations each run trained.
    """

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: Optional[dict] = None) -> None:
        """Record the loss of the iteration that just ran.

        Args:
            runner (Runner): The runner.
            batch_idx (int): Index of the batch.
            data_batch (Any): The batch (unused).
            outputs (dict): The log variables returned by ``train_step``.
        """
        path = osp.join(runner.work_dir, f'losses_rank{get_rank()}.jsonl')
        with open(path, 'a') as f:
            f.write(json.dumps(dict(iter=runner.iter + 1, loss=float(outputs['loss']))) + '\n')


@MODELS.register_module(force=True)
class SeededEngineToyModel(EngineToyModel):
    """:class:`EngineToyModel` whose initial weights come from its own generator.

    ``Runner`` builds the model right after seeding, ``FlexibleRunner`` only when training
    starts, after other random draws; a private generator gives both the same start. Under
    ``--fsdp`` each of its two ``Linear`` layers is an FSDP unit.

    Args:
        init_seed (int): Seed of the initial weights. Defaults to 0.
        **kwargs: Arguments of :class:`EngineToyModel`.
    """

    def __init__(self, init_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        generator = torch.Generator().manual_seed(init_seed)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_((torch.rand(param.shape, generator=generator) - 0.5) * 0.5)

    @classmethod
    def fsdp_block_classes(cls, cfg: Dict) -> Tuple[str, ...]:
        """The toy's blocks for ``--fsdp``: each ``Linear`` layer."""
        return ('Linear', )
