"""PixelLM's pixel decoder with its prompts standardised over the batch, for random-init LLMs."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from pixellm.models import PixelDecoder
from pixellm.registry import MODELS


@MODELS.register_module()
class PromptNormPixelDecoder(PixelDecoder):
    """:class:`~pixellm.models.PixelDecoder` whose codebook states are standardised and scaled.

    In an LLM trained from random initialisation, such as the demo's tiny LLaMA, the codebook
    hidden states are dominated by a part that is the same for every target (there are no
    pretrained, token-specific representations), the target-specific part is small, and the
    decoder settles on one prompt-independent mask ("all salient objects") before it learns to
    read the prompt. This decoder standardises each codebook slot's hidden state over the targets
    of the batch (a ``BatchNorm1d`` without affine terms, running statistics at test time), which
    removes that shared part, and multiplies the prompts out of ``text_hidden_fcs`` by
    ``prompt_scale`` so that they weigh like the learned SAM tokens beside them. Everything else
    is the official decoder; with pretrained LLaVA weights neither step is needed.

    Args:
        state_norm (str): ``'batch'``: standardise over the batch's targets. Defaults to
            ``'batch'``.
        prompt_scale (float): Factor on the prompts. Defaults to 1.0.
        **kwargs: The arguments of :class:`~pixellm.models.PixelDecoder`.
    """

    def __init__(self, *args, state_norm: str = 'batch', prompt_scale: float = 1.0,
                 init_cfg: Optional[Dict] = None, **kwargs) -> None:
        super().__init__(*args, init_cfg=init_cfg, **kwargs)
        if state_norm != 'batch':
            raise ValueError(f"state_norm must be 'batch', got {state_norm!r}")
        self.state_norm = nn.BatchNorm1d(
            self.in_channels * self.num_scales * self.tokens_per_scale, affine=False)
        self.prompt_scale = float(prompt_scale)

    def text_prompts(self, states: torch.Tensor) -> torch.Tensor:
        """Standardise, apply ``text_hidden_fcs``, scale: ``(N, scales, tokens, embed_dim)``."""
        x = self._normalise_states(states.to(self.text_hidden_fcs[0].weight.dtype))
        x = super().text_prompts(x)
        return x * self.prompt_scale if self.prompt_scale != 1.0 else x

    def _normalise_states(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flat = x.reshape(n, -1).float()
        bn = self.state_norm
        # Batch statistics need two targets; a lone target in training uses the running ones.
        use_batch = self.training and n > 1
        # Statistics are kept and applied in float32, also in a bf16/fp16 model (the CPU kernel
        # refuses half-precision statistics with float32 input).
        mean, var = bn.running_mean.float(), bn.running_var.float()
        out = F.batch_norm(flat, mean, var, None, None, training=use_batch,
                           momentum=bn.momentum, eps=bn.eps)
        if use_batch:
            if mean.data_ptr() != bn.running_mean.data_ptr():
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
            bn.num_batches_tracked += 1
        return out.to(x.dtype).reshape(x.shape)
