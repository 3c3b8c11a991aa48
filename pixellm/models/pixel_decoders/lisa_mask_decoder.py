"""LISA's mask head: the ``[SEG]`` hidden state, projected, prompts SAM's mask decoder."""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from pixellm.registry import MODELS
from .base_pixel_decoder import BasePixelDecoder

# SAM's mask decoder as segment_anything builds it (build_sam.py: TwoWayTransformer(depth=2,
# embedding_dim=256, mlp_dim=2048, num_heads=8), 3 multimask outputs, IoU head of depth 3 and
# width 256). Its two-way blocks use nn.LayerNorm's default eps (1e-5); transformers' config
# defaults to 1e-6 there, which would shift every output slightly.
SAM_MASK_DECODER = dict(mlp_dim=2048, num_hidden_layers=2, num_attention_heads=8,
                        attention_downsample_rate=2, num_multimask_outputs=3, iou_head_depth=3,
                        iou_head_hidden_dim=256, layer_norm_eps=1e-5)
_SAM_PREFIXES = ('prompt_encoder.', 'mask_decoder.', 'shared_image_embedding.')


@MODELS.register_module()
class LISAMaskDecoder(BasePixelDecoder):
    """SAM's prompt encoder and mask decoder, prompted by the LLM's ``[SEG]`` hidden states.

    As LISA (``LISAForCausalLM.model_forward``): each target's hidden state goes through
    ``text_hidden_fcs`` (Linear(H, H), ReLU, Linear(H, D), Dropout(0)) to a ``D``-wide vector
    that is SAM's sparse prompt; the dense prompt is SAM's "no mask" embedding; the image
    positional encoding is SAM's random-Fourier encoding of the feature grid. SAM's mask
    decoder then runs with ``multimask_output=False`` (its first mask token), all targets of an
    image batched against that image's embedding. The prompt encoder and mask decoder are
    transformers' ``SamPromptEncoder`` and ``SamMaskDecoder``.

    Trained as LISA trains (``train_ds.py``): ``text_hidden_fcs`` and the mask decoder; the
    prompt encoder stays frozen. The mask decoder's hypernetwork MLPs 2-4 and its IoU head are
    frozen as well: with a single mask output no loss reaches them (LISA lists them as trainable,
    but they get no gradient there either), and DDP must see no unused trainable weight.

    With ``tokens_per_scale > 1``, each target's tokens are all its sparse prompts (LISA has one
    ``[SEG]`` token per target).

    Args:
        in_channels (int): Width of the ``[SEG]`` hidden states (the LLM width).
        feat_channels (int): Width of the image embedding and of the prompts (SAM: 256, the
            image encoder's neck output; LISA's ``out_dim``).
        grid_size (int): Side of the image-embedding grid (SAM: 1024 / 16 = 64).
        input_size (int): Side of the image encoder's input (SAM: 1024).
        num_scales (int): Must be 1: SAM decodes one image embedding. Defaults to 1.
        tokens_per_scale (int): Sparse prompt tokens per target. Defaults to 1.
        mask_decoder_config (dict, optional): ``SamMaskDecoderConfig`` kwargs over SAM's
            (:data:`SAM_MASK_DECODER`); ``hidden_size`` is ``feat_channels``.
        mask_input_channels (int): Hidden channels of SAM's (unused) mask-prompt encoder, kept
            so that SAM checkpoints load whole. Defaults to 16 (SAM's).
        pretrained (str, optional): A local Hugging Face ``SamModel`` folder
            (``facebook/sam-vit-huge`` downloaded) whose prompt encoder and mask decoder are
            loaded, to train from SAM as LISA does. None keeps random weights (a converted LISA
            checkpoint fills them).
        train_mask_decoder (bool): Train the mask decoder (LISA's ``--train_mask_decoder``,
            on by default there). Defaults to True.
        attn_implementation (str): Attention of the two-way transformer, ``'sdpa'`` (default)
            or ``'eager'`` (SAM's arithmetic step by step).
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 in_channels: int,
                 feat_channels: int,
                 grid_size: int,
                 input_size: int,
                 num_scales: int = 1,
                 tokens_per_scale: int = 1,
                 mask_decoder_config: Optional[Dict] = None,
                 mask_input_channels: int = 16,
                 pretrained: Optional[str] = None,
                 train_mask_decoder: bool = True,
                 attn_implementation: str = 'sdpa',
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(in_channels, feat_channels, grid_size, input_size, num_scales,
                         tokens_per_scale, init_cfg=init_cfg)
        from transformers import SamConfig
        from transformers.models.sam.modeling_sam import SamMaskDecoder, SamPromptEncoder
        if num_scales != 1:
            raise ValueError(f'LISAMaskDecoder decodes one image embedding (num_scales=1), got '
                             f'num_scales={num_scales}')
        if input_size % grid_size:
            raise ValueError(f'input_size {input_size} is not a multiple of grid_size '
                             f'{grid_size}')
        if attn_implementation not in ('sdpa', 'eager'):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got "
                             f'{attn_implementation!r}')
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(in_channels, in_channels), nn.ReLU(inplace=True),
            nn.Linear(in_channels, feat_channels), nn.Dropout(0.0))
        decoder_cfg = dict(SAM_MASK_DECODER, **(mask_decoder_config or {}),
                           hidden_size=feat_channels)
        # The prompt encoder reads its positional encoding's width from the vision config.
        config = SamConfig(
            vision_config=dict(num_pos_feats=feat_channels // 2),
            prompt_encoder_config=dict(hidden_size=feat_channels, image_size=input_size,
                                       patch_size=input_size // grid_size,
                                       mask_input_channels=mask_input_channels),
            mask_decoder_config=decoder_cfg)
        config.mask_decoder_config._attn_implementation = attn_implementation
        self.prompt_encoder = SamPromptEncoder(config)
        self.mask_decoder = SamMaskDecoder(config.mask_decoder_config)
        # SAM draws the Fourier frequencies from N(0, 1); transformers scales them by half the
        # vision width, which only matters for a decoder that is not loaded from SAM.
        nn.init.normal_(self.prompt_encoder.shared_embedding.positional_embedding)
        if pretrained is not None:
            self._load_sam(pretrained)
        self.prompt_encoder.requires_grad_(False)
        self.mask_decoder.requires_grad_(train_mask_decoder)
        for module in (*self.mask_decoder.output_hypernetworks_mlps[1:],
                       self.mask_decoder.iou_prediction_head):
            module.requires_grad_(False)

    def _load_sam(self, pretrained: str) -> None:
        from pixellm.models.converters.hf_checkpoint import load_hf_state_dict
        state = load_hf_state_dict(pretrained, select=lambda k: k.startswith(_SAM_PREFIXES))
        # SamModel ties the prompt encoder's positional encoding to this one and saves it once.
        shared = state.pop('shared_image_embedding.positional_embedding', None)
        pe_key = 'prompt_encoder.shared_embedding.positional_embedding'
        if shared is not None:
            state.setdefault(pe_key, shared)
        ours = {f'{part}.{k}': v for part in ('prompt_encoder', 'mask_decoder')
                for k, v in getattr(self, part).state_dict().items()}
        missing = sorted(set(ours) - set(state))
        unexpected = sorted(set(state) - set(ours))
        wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in ours.items()
                 if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            raise ValueError(f'{pretrained!r} is not a SAM checkpoint of this decoder\'s shape: '
                             f'missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes '
                             f'{wrong[:5]}')
        for part in ('prompt_encoder', 'mask_decoder'):
            getattr(self, part).load_state_dict(
                {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + '.')})

    @property
    def low_res_size(self) -> int:
        """Side of the low-res masks: SAM upsamples the embedding 4x (256 for a 64 grid)."""
        return 4 * self.grid_size

    def dense_positional_encoding(self) -> torch.Tensor:
        """SAM's ``get_dense_pe``: the positional encoding of every grid cell's centre.

        Returns:
            Tensor: ``(1, feat_channels, grid, grid)``.
        """
        pe = self.prompt_encoder.shared_embedding
        g = self.grid_size
        weight = pe.positional_embedding
        centres = (torch.arange(g, device=weight.device, dtype=weight.dtype) + 0.5) / g
        # (x, y) of cell (row i, column j) is (centres[j], centres[i]).
        coords = torch.stack(torch.meshgrid(centres, centres, indexing='xy'), dim=-1)
        return pe(coords).permute(2, 0, 1)[None]

    def text_prompts(self, states: torch.Tensor) -> torch.Tensor:
        """``(N, 1, tokens, in_channels)`` hidden states -> ``(N, tokens, feat_channels)``."""
        if states.shape[1:3] != (self.num_scales, self.tokens_per_scale):
            self.check_codebook(states.shape[1], states.shape[2])
        weight = self.text_hidden_fcs[0].weight
        return self.text_hidden_fcs(states[:, 0].to(weight.dtype))

    def forward(self, target_states: Sequence[torch.Tensor],
                image_feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Decode low-res mask logits, one SAM mask per target.

        Args:
            target_states (Sequence[Tensor]): Per image, ``(N_i, 1, tokens_per_scale,
                in_channels)`` ``[SEG]`` hidden states (``N_i`` may be 0).
            image_feats (Sequence[Tensor]): One ``(B, grid**2, feat_channels)`` tensor: the
                SAM image embedding, row-major over the grid.

        Returns:
            list[Tensor]: Per image, ``(N_i, 4 * grid, 4 * grid)`` mask logits.
        """
        if len(image_feats) != 1:
            raise ValueError(f'LISAMaskDecoder takes one image embedding, got {len(image_feats)} '
                             'feature scales')
        feats = image_feats[0]
        g, c = self.grid_size, self.feat_channels
        if feats.shape[1:] != (g * g, c):
            raise ValueError(f'image embedding of shape {tuple(feats.shape)}, expected '
                             f'(B, {g * g}, {c})')
        if len(target_states) != feats.shape[0]:
            raise ValueError(f'{len(target_states)} images of targets for {feats.shape[0]} image '
                             'embeddings')
        dtype = self.mask_decoder.iou_token.weight.dtype
        embeddings = feats.transpose(1, 2).reshape(-1, c, g, g).to(dtype)
        size = self.low_res_size
        counts = [int(t.shape[0]) for t in target_states]
        if sum(counts) == 0:
            # Tie the empty outputs to every trainable weight and to the features, so a batch
            # without targets still gives DDP a gradient (zero) for all of them.
            anchor = sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0 \
                + embeddings.sum() * 0.0
            return [embeddings.new_zeros(0, size, size) + anchor for _ in counts]
        # No points, boxes or masks: no sparse prompt of its own, the dense prompt is SAM's
        # "no mask" embedding, (1, C, g, g).
        _, dense = self.prompt_encoder(None, None, None, None)
        dense = dense.to(dtype)
        pe = self.dense_positional_encoding().to(dtype)
        out = []
        for i, states in enumerate(target_states):
            if states.shape[0] == 0:
                out.append(embeddings.new_zeros(0, size, size) + embeddings[i].sum() * 0.0)
                continue
            prompts = self.text_prompts(states).to(dtype)
            masks, _ = self.mask_decoder(
                image_embeddings=embeddings[i:i + 1], image_positional_embeddings=pe,
                sparse_prompt_embeddings=prompts[None], dense_prompt_embeddings=dense,
                multimask_output=False)
            out.append(masks[0, :, 0])
        return out
