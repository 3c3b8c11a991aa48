"""PixelLM's segmentation codebook: the learnable tokens that stand for one target in an answer."""
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.model import BaseModule

from pixellm.registry import MODELS
from pixellm.text.codebook_tokens import codebook_token_strings, expand_seg_placeholders, target_string


@MODELS.register_module()
class SegCodebook(BaseModule):
    """``num_scales x tokens_per_scale`` tokens written, in order, for every target of an answer.

    The codebook owns the token strings and ids and the logic that finds a target's tokens again
    in a sequence; the embedding and LM-head rows of its tokens are trainable rows the LLM
    backbone appends to its frozen tables (:meth:`HFCausalLM.add_token_rows`).

    Which hidden state stands for a token follows the official code (and LISA): the last-layer
    state one position *before* the token, i.e. the state from which the LLM emits that token
    (``hidden_offset=-1``). ``hidden_offset=0`` takes the token's own state instead.

    Args:
        num_scales (int): Image-feature scales (``image_feature_scale_num``). Defaults to 2.
        tokens_per_scale (int): Tokens per scale (``seg_token_num``). Defaults to 3.
        token_format (str): Token string format. Defaults to ``'[SEG{}]'`` (official names).
        hidden_offset (int): ``-1`` (official) or ``0``; see above.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 num_scales: int = 2,
                 tokens_per_scale: int = 3,
                 token_format: str = '[SEG{}]',
                 hidden_offset: int = -1,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if hidden_offset not in (-1, 0):
            raise ValueError(f'hidden_offset must be -1 or 0, got {hidden_offset}')
        self.num_scales = num_scales
        self.tokens_per_scale = tokens_per_scale
        self.tokens = codebook_token_strings(num_scales, tokens_per_scale, token_format)
        self.hidden_offset = hidden_offset
        # A plain list, not a buffer: ids are tokenizer facts, valid on any device (even meta).
        self.token_ids: List[int] = []

    @property
    def num_tokens(self) -> int:
        """Tokens per target (``num_scales * tokens_per_scale``)."""
        return len(self.tokens)

    @property
    def target_text(self) -> str:
        """How one target is written in an answer."""
        return target_string(self.tokens)

    def expand(self, text: str) -> str:
        """Replace each ``{seg}`` placeholder in ``text`` with this codebook's tokens."""
        return expand_seg_placeholders(text, self.tokens)

    def add_to_tokenizer(self, tokenizer) -> List[int]:
        """Add the codebook tokens to ``tokenizer`` and remember their ids.

        Tokens already present keep their ids. Each token must encode to exactly one id.

        Returns:
            list[int]: The ids of the codebook tokens in codebook order.
        """
        tokenizer.add_tokens(self.tokens)
        ids = []
        for token in self.tokens:
            encoded = tokenizer(token, add_special_tokens=False).input_ids
            if len(encoded) != 1:
                raise ValueError(f'codebook token {token!r} encodes to {len(encoded)} ids '
                                 f'{encoded}; choose a token_format the tokenizer keeps whole')
            ids.extend(encoded)
        self.bind(ids)
        return ids

    def bind(self, ids: Sequence[int]) -> None:
        """Set the token ids (after the tokenizer was extended elsewhere)."""
        if len(ids) != self.num_tokens or len(set(ids)) != self.num_tokens:
            raise ValueError(f'codebook needs {self.num_tokens} distinct ids, got {list(ids)}')
        self.token_ids = [int(i) for i in ids]

    def _check_bound(self) -> None:
        if len(self.token_ids) != self.num_tokens:
            raise RuntimeError('SegCodebook has no token ids: call add_to_tokenizer() or bind()')

    def find_targets(self, input_ids: torch.Tensor, strict: bool = True) -> List[torch.Tensor]:
        """Find the complete targets in each sequence.

        A target is the codebook tokens in codebook order; other tokens (the spaces a tokenizer
        may put between added tokens) can sit between them, as the official code selects
        codebook tokens by id and groups them in order.

        Args:
            input_ids (Tensor): ``(B, L)`` token ids.
            strict (bool): Raise when the codebook tokens of a sequence do not form whole
                targets (training data must be well formed). With False (generation), broken
                groups are skipped.

        Returns:
            list[Tensor]: Per sequence, ``(N_i, num_tokens)`` positions of each target's tokens.
        """
        self._check_bound()
        ids = torch.tensor(self.token_ids, dtype=torch.long, device=input_ids.device)
        n = self.num_tokens
        rank = {t: i for i, t in enumerate(self.token_ids)}
        found = []
        for b, seq in enumerate(input_ids):
            where = torch.nonzero(torch.isin(seq, ids)).flatten().tolist()
            tokens = [rank[t] for t in seq[where].tolist()]  # one device sync per sequence
            groups, current = [], []
            for pos, r in zip(where, tokens):
                if r == len(current):
                    current.append(pos)
                    if len(current) == n:
                        groups.append(current)
                        current = []
                elif strict:
                    break
                else:
                    current = [pos] if r == 0 else []
            if strict and len(groups) * n != len(where):
                raise ValueError(
                    f'sequence {b} holds {len(where)} codebook tokens that do not form whole '
                    f'targets: each target must be the {n} tokens {self.tokens} in this order '
                    f'(found the token order {[self.tokens[r] for r in tokens]})')
            found.append(torch.tensor(groups, dtype=torch.long,
                                      device=seq.device).view(len(groups), n))
        return found

    def count_targets(self, input_ids: torch.Tensor, strict: bool = True) -> List[int]:
        """Number of complete targets per sequence."""
        return [len(p) for p in self.find_targets(input_ids, strict)]

    def gather(self, hidden: torch.Tensor, input_ids: torch.Tensor,
               positions: Optional[List[torch.Tensor]] = None,
               strict: bool = True) -> List[torch.Tensor]:
        """Gather the hidden states that stand for each target's tokens.

        Args:
            hidden (Tensor): ``(B, L, C)`` hidden states aligned with ``input_ids``.
            input_ids (Tensor): ``(B, L)`` token ids.
            positions (list[Tensor], optional): Output of :meth:`find_targets` if already known.
            strict (bool): See :meth:`find_targets`.

        Returns:
            list[Tensor]: Per sequence, ``(N_i, num_scales, tokens_per_scale, C)`` in scale-major
            order (the official grouping).
        """
        if hidden.shape[:2] != input_ids.shape:
            raise ValueError(f'hidden {tuple(hidden.shape)} and input_ids '
                             f'{tuple(input_ids.shape)} are not aligned')
        if positions is None:
            positions = self.find_targets(input_ids, strict)
        out = []
        for b, pos in enumerate(positions):
            pos = pos + self.hidden_offset
            if pos.numel() and int(pos.min()) < 0:
                raise ValueError(f'sequence {b} starts with a codebook token: no state emits it')
            states = hidden[b, pos.flatten()].view(len(pos), self.num_scales,
                                                   self.tokens_per_scale, hidden.shape[-1])
            out.append(states)
        return out
