"""The interface of an auxiliary head: extra training losses computed from PixelLM's outputs."""
from abc import ABCMeta, abstractmethod
from typing import Dict, Optional, Sequence

import torch
from mmengine.model import BaseModule


class BaseAuxHead(BaseModule, metaclass=ABCMeta):
    """An auxiliary head: a module with its own weights that adds loss terms in training.

    ``PixelLM(aux_heads=[...])`` builds each head from its config (filling in ``in_channels``,
    the LLM width, and ``vocab_size``, the tokenizer's size, where an ``__init__`` of the head's
    class or its bases names them and the config leaves them out), and in ``loss`` mode calls :meth:`loss` after the
    paper's losses. Heads are not used at inference. As in mmsegmentation's auxiliary heads, a
    head owns its weights and returns a dict of named losses, which are summed into the total
    and logged under their names.

    What :meth:`loss` receives in ``outputs`` (one teacher-forced forward pass of the batch):

    - ``hidden`` (``(B, L, H)``): the LLM's last hidden states over the batched sequences
      (image tokens expanded; padding on the right).
    - ``input_ids`` (``(B, L)``): the token id at each position (-1 at each image token, in grid
      order; the pad id at padding).
    - ``logits``, ``labels``: the LLM's logits and the text labels.
    - ``codebook_positions`` (list of ``(N_i, T)``): per sample, the positions of each target's
      ``T`` codebook tokens; ``codebook_states`` (list of ``(N_i, scales, tokens, H)``): the
      hidden states the pixel decoder reads for them.
    - ``mask_logits`` (list of ``(N_i, H_i, W_i)``): the decoded masks at the original size;
      ``gt_masks`` (list of ``(N_i, H_i, W_i)``): the ground truth, in answer order.
    - ``non_text_ids`` (``(K,)``): ids that are not text (the codebook tokens and padding).
    - ``valid_hw`` (list of ``(h, w)``): each image's size inside the padded square input;
      ``input_size`` (int): the side of that input; ``llm_image_grid`` (int): the side of the
      grid of image tokens the LLM sees.

    Args:
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self, init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)

    @abstractmethod
    def loss(self, outputs: Dict, data_samples: Sequence) -> Dict[str, torch.Tensor]:
        """Loss terms of this head for one batch.

        Args:
            outputs (dict): The teacher-forced outputs listed in the class docstring.
            data_samples (Sequence[PixelLMDataSample]): The batch's samples.

        Returns:
            dict[str, Tensor]: Named scalar losses (names starting with ``loss``), already
            weighted.
        """
