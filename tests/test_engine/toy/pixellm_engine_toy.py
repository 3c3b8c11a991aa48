"""A tiny plugin for the engine tests: a dropout MLP, a noisy regression dataset, a metric and a
hook that kills the process, all registered in pixellm's registries through ``custom_imports``."""
import os
import signal
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from pixellm.registry import DATASETS, HOOKS, METRICS, MODELS
from pixellm.structures import PixelLMDataSample


@MODELS.register_module(force=True)
class EngineToyModel(BaseModel):
    """``Linear -> ReLU -> Dropout -> Linear`` regressor; dropout makes resume RNG-sensitive.

    Args:
        in_dim (int): Input features. Defaults to 4.
        hidden (int): Hidden features. Defaults to 16.
        dropout (float): Dropout probability. Defaults to 0.5.
        overlay_image (str, optional): If set, ``predict`` returns ``PixelLMDataSample``s on
            this image (one mask: the left part, wider for larger predictions), as PixelLM's
            predictions reach ``PixelLMVisualizationHook``. Defaults to None.
        data_preprocessor (dict, optional): mmengine data preprocessor config.
    """

    def __init__(self, in_dim: int = 4, hidden: int = 16, dropout: float = 0.5,
                 overlay_image: Optional[str] = None,
                 data_preprocessor: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor)
        self.overlay_image = overlay_image
        self.fc1 = nn.Linear(in_dim, hidden)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, inputs: List[torch.Tensor], data_samples: Optional[List] = None,
                mode: str = 'tensor') -> Any:
        x = torch.stack(list(inputs))
        pred = self.fc2(self.drop(F.relu(self.fc1(x)))).squeeze(-1)
        if mode == 'loss':
            return dict(loss=F.mse_loss(pred, torch.stack(list(data_samples))))
        if mode == 'predict':
            if self.overlay_image is None:
                return [dict(pred=p.item(), target=t.item()) for p, t in zip(pred, data_samples)]
            return [self._overlay_sample(p.item(), t.item()) for p, t in zip(pred, data_samples)]
        return pred

    def _overlay_sample(self, pred: float, target: float) -> PixelLMDataSample:
        width, height = Image.open(self.overlay_image).size
        masks = torch.zeros(1, height, width, dtype=torch.bool)
        masks[0, :, :max(1, min(width, int(abs(pred)) + 1))] = True
        sample = PixelLMDataSample(metainfo=dict(
            img_path=self.overlay_image, question='How large is y?',
            pred_text=f'y is about {pred:.2f}', pred=pred, target=target))
        sample.pred_instances = InstanceData(masks=masks, scores=torch.ones(1))
        return sample


@DATASETS.register_module(force=True)
class EngineToyDataset(Dataset):
    """``y = w . x`` with fixed ``x`` per index plus fresh Gaussian noise drawn at every access
    from the global torch generator (so data loading consumes random numbers).

    Args:
        length (int): Number of samples. Defaults to 24.
        noise (float): Noise scale. Defaults to 0.1.
    """

    # numpy values as in mmseg-style dataset meta: the checkpoint loader must accept them.
    metainfo = dict(name='engine-toy', palette=np.array([[0, 0, 0], [255, 0, 0]], dtype=np.uint8),
                    scale=np.float32(0.5))

    def __init__(self, length: int = 24, noise: float = 0.1) -> None:
        self.length = length
        self.noise = noise
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(length, 4, generator=gen)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        x = self.x[index] + self.noise * torch.randn(4)
        return dict(inputs=x, data_samples=self.y[index])


@METRICS.register_module(force=True)
class EngineToyMetric(BaseMetric):
    """Mean squared error and sample count of :class:`EngineToyModel` predictions."""

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            self.results.append((sample['pred'] - sample['target']) ** 2)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        return dict(mse=float(sum(results) / len(results)), count=len(results))


@HOOKS.register_module(force=True)
class KillProcessHook(Hook):
    """SIGKILL the process after an iteration/epoch (after its checkpoint), as a crash would.

    Args:
        after_iter (int, optional): 1-based iteration after which to die.
        after_epoch (int, optional): 1-based epoch after which to die.
    """

    priority = 'LOWEST'

    def __init__(self, after_iter: Optional[int] = None,
                 after_epoch: Optional[int] = None) -> None:
        self.after_iter = after_iter
        self.after_epoch = after_epoch

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.after_iter is not None and runner.iter + 1 == self.after_iter:
            os.kill(os.getpid(), signal.SIGKILL)

    def after_train_epoch(self, runner) -> None:
        if self.after_epoch is not None and runner.epoch + 1 == self.after_epoch:
            os.kill(os.getpid(), signal.SIGKILL)
