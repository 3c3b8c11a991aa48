"""Write a trained vision tower as a Hugging Face folder when training ends."""
import os.path as osp
from typing import Optional

from mmengine.dist import barrier, is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from pixellm.registry import HOOKS

# Wrappers whose ``.module`` holds sharded or partitioned weights: rank 0 alone cannot write them.
_SHARDED_WRAPPERS = ('FullyShardedDataParallel', 'MMFullyShardedDataParallel')


@HOOKS.register_module()
class SaveVisionEncoderHook(Hook):
    """After training, save ``model.vision_encoder`` with its ``save_pretrained``.

    The folder is what ``CLIPVisionEncoder(pretrained=...)`` loads, so a model trained in one run
    (the demo's ``VisionEncoderPretrainer``) becomes the tower of another (PixelLM) the way a
    released CLIP checkpoint does. Only the main process writes; the others wait for it. The
    model is checked before training starts, so a wrong model fails at once, not after the run.
    Sharded training (FSDP, DeepSpeed ZeRO-3) is refused: its ranks hold parts of the weights.

    Args:
        out_dir (str): Folder, relative to the runner's ``work_dir`` unless absolute. Defaults
            to ``'vision_encoder'``.
    """

    priority = 'VERY_LOW'

    def __init__(self, out_dir: str = 'vision_encoder') -> None:
        self.out_dir = out_dir
        self.saved_to: Optional[str] = None

    @staticmethod
    def _encoder(runner):
        model = runner.model
        wrapper = type(model).__name__
        if wrapper in _SHARDED_WRAPPERS or (
                hasattr(model, 'zero_optimization_stage')
                and model.zero_optimization_stage() == 3):
            raise RuntimeError(f'SaveVisionEncoderHook cannot write a tower whose weights are '
                               f'sharded ({wrapper}); train it with DDP or on one process')
        model = model.module if is_model_wrapper(model) else model
        encoder = getattr(model, 'vision_encoder', None)
        if encoder is None or not hasattr(encoder, 'save_pretrained'):
            raise TypeError(f'SaveVisionEncoderHook needs a model with a vision_encoder that has '
                            f'save_pretrained(), got {type(model).__name__}')
        return encoder

    def before_train(self, runner) -> None:
        """Check the model can be saved."""
        self._encoder(runner)

    def after_train(self, runner) -> None:
        """Write the folder."""
        encoder = self._encoder(runner)
        path = self.out_dir if osp.isabs(self.out_dir) else osp.join(runner.work_dir,
                                                                      self.out_dir)
        if is_main_process():
            encoder.save_pretrained(path)
            runner.logger.info(f'vision encoder written to {path} (load it with '
                               f'vision_encoder.pretrained={path!r})')
        barrier()
        self.saved_to = path
