"""Draw predictions during validation (to the visualizer's backends) and test (to PNG files)."""
import os
import os.path as osp
from collections import defaultdict
from typing import Any, Dict, Optional, Sequence

import numpy as np
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook

from pixellm.registry import HOOKS
from pixellm.visualization import PixelLMVisualizer


def codebook_tokens_of(runner) -> tuple:
    """The codebook token strings of the runner's model (unwrapped), or ``()`` if it has none."""
    model = getattr(runner, 'model', None)
    model = getattr(model, 'module', model)
    codebook = getattr(model, 'codebook', None)
    return tuple(getattr(codebook, 'tokens', ()))


@HOOKS.register_module()
class PixelLMVisualizationHook(Hook):
    """Draw predictions with :class:`~pixellm.visualization.PixelLMVisualizer`, in val and test.

    - **Validation**: at each validation run, the first sample of batches ``0, interval,
      2 * interval, ...`` (at most ``max_samples``), prediction | ground truth, goes to the
      runner's visualizer as ``val_<image stem>_q<k>`` at step ``runner.iter``
      (``LocalVisBackend``: ``<log_dir>/vis_data/vis_image/<name>_<step>.png``;
      ``TensorboardVisBackend``: the event file). With the usual unshuffled validation sampler the
      same samples are drawn every time, so their progress can be followed.
    - **Test** (only when ``test_out_dir`` is set; ``tools/test.py --show-dir DIR`` sets it):
      every sample of every ``test_interval``-th batch (at most ``max_test_samples``) is written
      to ``test_out_dir/<image stem>_q<k>.png``, the prediction alone or, with
      ``draw_gt_in_test``, beside the ground truth.

    ``k`` is the metainfo ``question_index`` the test pipelines carry, so names are stable across
    ranks; a sample without it gets the count of questions already drawn for its image (with
    ``_rank<r>`` appended in distributed runs, where ranks count separately).

    The drawing goes through the runner's visualizer when it is a ``PixelLMVisualizer`` (the
    recipes' ``default_runtime.py``), else through one the hook makes, whose images still reach
    the runner's visualizer backends in validation.

    Args:
        interval (int): Validation: draw every ``interval``-th batch. Defaults to 50.
        max_samples (int): Validation images per validation run. Defaults to 4.
        test_out_dir (str, optional): Test: folder of the PNGs; relative paths are under the
            run's ``log_dir``. ``None`` draws nothing in test. Defaults to None.
        test_interval (int): Test: draw every ``test_interval``-th batch. Defaults to 1.
        max_test_samples (int, optional): Test: stop after this many images. Defaults to None.
        draw_gt_in_test (bool): Test: draw the ground truth beside the prediction. Defaults to
            False.
        alpha (float): Weight of the mask colour, for a visualizer the hook makes. Defaults to
            0.5.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 50, max_samples: int = 4,
                 test_out_dir: Optional[str] = None, test_interval: int = 1,
                 max_test_samples: Optional[int] = None, draw_gt_in_test: bool = False,
                 alpha: float = 0.5) -> None:
        for key, value in (('interval', interval), ('max_samples', max_samples),
                           ('test_interval', test_interval)):
            if value < 1:
                raise ValueError(f'PixelLMVisualizationHook: {key} must be >= 1, got {value}')
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f'PixelLMVisualizationHook: alpha must be in [0, 1], got {alpha}')
        self.interval = interval
        self.max_samples = max_samples
        self.test_out_dir = test_out_dir
        self.test_interval = test_interval
        self.max_test_samples = max_test_samples
        self.draw_gt_in_test = draw_gt_in_test
        self.alpha = alpha
        self.num_drawn = 0
        self.num_written = 0
        self._question_counts: Dict[str, int] = defaultdict(int)
        self._visualizer: Optional[PixelLMVisualizer] = None

    def _drawer(self, runner) -> PixelLMVisualizer:
        """The visualizer that draws, with the model's codebook tokens."""
        visualizer = getattr(runner, 'visualizer', None)
        if not isinstance(visualizer, PixelLMVisualizer):
            if self._visualizer is None:
                self._visualizer = PixelLMVisualizer(name=f'pixellm_visualization_{id(self)}',
                                                     alpha=self.alpha)
            visualizer = self._visualizer
        visualizer.codebook_tokens = codebook_tokens_of(runner)
        return visualizer

    def sample_name(self, sample: Any) -> str:
        """``<image stem>_q<k>`` of a data sample (see the class docstring)."""
        meta = sample.metainfo
        stem = osp.splitext(osp.basename(str(meta.get('img_path', 'sample'))))[0]
        if meta.get('question_index') is not None:
            return f'{stem}_q{int(meta["question_index"])}'
        name = f'{stem}_q{self._question_counts[stem]}'
        self._question_counts[stem] += 1
        # Ranks count independently; questions of one image may be split across them.
        return name + (f'_rank{get_rank()}' if get_world_size() > 1 else '')

    def before_val(self, runner) -> None:
        """Reset the per-validation count."""
        self.num_drawn = 0

    def after_val_iter(self, runner, batch_idx: int, data_batch: Any = None,
                       outputs: Optional[Sequence] = None) -> None:
        """Draw the first sample of every ``interval``-th batch.

        Args:
            runner (Runner): The runner.
            batch_idx (int): Index of the batch in the validation loop.
            data_batch (Any): The batch (unused).
            outputs (Sequence[PixelLMDataSample]): The predictions.
        """
        if not outputs or batch_idx % self.interval or self.num_drawn >= self.max_samples:
            return
        sample = outputs[0]
        drawn = self._drawer(runner).draw_datasample(sample)
        runner.visualizer.add_image(f'val_{self.sample_name(sample)}', np.asarray(drawn),
                                    step=runner.iter)
        self.num_drawn += 1

    def before_test(self, runner) -> None:
        """Resolve the output folder and reset the counters."""
        self.num_written = 0
        self._question_counts = defaultdict(int)
        if self.test_out_dir is not None:
            if not osp.isabs(self.test_out_dir):
                self.test_out_dir = osp.join(runner.log_dir, self.test_out_dir)
            os.makedirs(self.test_out_dir, exist_ok=True)

    def after_test_iter(self, runner, batch_idx: int, data_batch: Any = None,
                        outputs: Optional[Sequence] = None) -> None:
        """Write a PNG per sample of every ``test_interval``-th batch (with ``test_out_dir``).

        Args:
            runner (Runner): The runner.
            batch_idx (int): Index of the batch in the test loop.
            data_batch (Any): The batch (unused).
            outputs (Sequence[PixelLMDataSample]): The predictions.
        """
        if self.test_out_dir is None or not outputs or \
                not self.every_n_inner_iters(batch_idx, self.test_interval):
            return
        visualizer = self._drawer(runner)
        for sample in outputs:
            if self.max_test_samples is not None and self.num_written >= self.max_test_samples:
                return
            out_file = osp.join(self.test_out_dir, f'{self.sample_name(sample)}.png')
            visualizer.add_datasample(out_file, None, sample, draw_gt=self.draw_gt_in_test,
                                      out_file=out_file)
            self.num_written += 1

