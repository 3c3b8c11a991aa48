"""CLIP ViT image encoder returning the multi-scale patch features PixelLM feeds its LLM and decoder."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pixellm.registry import MODELS
from .base_vision_encoder import BaseVisionEncoder
from .utils import check_config_matches



def interpolate_position_embedding(weight: torch.Tensor, new_grid: int,
                                   layout: str = 'clip') -> torch.Tensor:
    """Resize a CLIP position-embedding table to a ``new_grid x new_grid`` patch grid.

    Args:
        weight (Tensor): ``(1 + g*g, C)`` table, CLS row first (CLIP's layout).
        new_grid (int): Patch grid side after resizing.
        layout (str): ``'clip'`` keeps the CLS row first and interpolates the patch rows.
            ``'official'`` reproduces PixelLM's ``--resize_vision_tower`` exactly: it treats the
            last row as CLS and the first ``g*g`` rows (CLS included) as the grid, and puts the
            CLS row last. The PixelLM-7B/13B recipes and the released checkpoints use it.

    Returns:
        Tensor: ``(1 + new_grid**2, C)``.
    """
    num, dim = weight.shape
    grid = int(round((num - 1) ** 0.5))
    if grid * grid != num - 1:
        raise ValueError(f'position embedding of {num} rows is not 1 + a square grid')
    if layout == 'clip':
        cls_row, patch_rows = weight[:1], weight[1:]
    elif layout == 'official':
        cls_row, patch_rows = weight[-1:], weight[:-1]
    else:
        raise ValueError(f"layout must be 'clip' or 'official', got {layout!r}")
    grid_w = patch_rows.t().reshape(1, dim, grid, grid).float()
    resized = F.interpolate(grid_w, (new_grid, new_grid), mode='bilinear', align_corners=False)
    resized = resized[0].flatten(1).t().to(weight.dtype)
    if layout == 'clip':
        return torch.cat([cls_row, resized], dim=0)
    return torch.cat([resized, cls_row], dim=0)


@MODELS.register_module()
class CLIPVisionEncoder(BaseVisionEncoder):
    """CLIP vision tower with PixelLM's resizing, padding mask and multi-scale layer selection.

    Built from a Hugging Face checkpoint (hub name or local path, e.g.
    ``openai/clip-vit-large-patch14-336``) or, with ``pretrained=None``, from a
    ``CLIPVisionConfig`` dict with random weights (tests and the CPU demo).

    Args:
        pretrained (str, optional): Checkpoint name or path for ``CLIPVisionModel.from_pretrained``.
        vision_config (dict, optional): ``CLIPVisionConfig`` kwargs for a random tower when
            ``pretrained`` is None. Given with ``pretrained``, it is a check: every field must
            equal the checkpoint's (``ValueError`` otherwise); it overrides nothing.
        image_size (int, optional): Input size after resizing the tower (PixelLM:
            ``--resize_vision_tower_size=448``). Position embeddings are bilinearly interpolated.
            Defaults to the checkpoint's size.
        select_layers (Sequence[int]): Hidden-state indices, one per feature scale, in the order
            the decoder consumes them. Scale 0 is the LLaVA select layer (``-2``); PixelLM's second
            scale is ``-11``. Indices follow Hugging Face's ``hidden_states`` convention (0 is the
            embedding output).
        pos_embed_layout (str): How the position table is resized to ``image_size``:
            ``'official'`` as the official PixelLM code does (the PixelLM-7B/13B recipes, and the
            layout of the released checkpoints), ``'clip'`` (the default) keeping CLIP's CLS row
            first; see :func:`interpolate_position_embedding`. The table is resized in float32
            before the tower is cast to ``torch_dtype``.
        mask_padding (bool): Mask attention to patches that lie wholly in the padding added by
            longest-side-resize-and-pad preprocessing (the official ``pad_train_clip_images``).
        frozen (bool): Freeze all weights and run in eval mode. Defaults to True (PixelLM never
            trains CLIP).
        torch_dtype (str, optional): dtype of the tower (``'bfloat16'``...); a checkpoint is read
            in its own precision and cast after resizing. None keeps that precision (float32 for
            a random tower).
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 vision_config: Optional[Dict] = None,
                 image_size: Optional[int] = None,
                 select_layers: Sequence[int] = (-2, -11),
                 pos_embed_layout: str = 'clip',
                 mask_padding: bool = True,
                 frozen: bool = True,
                 torch_dtype: Optional[str] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(frozen=frozen, init_cfg=init_cfg)
        from transformers import CLIPVisionConfig, CLIPVisionModel
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
        if pretrained is not None:
            # Loaded in the checkpoint's precision (float32 for OpenAI's CLIP) and cast after the
            # position table is resized, as the official code resizes before casting to bf16.
            model = CLIPVisionModel.from_pretrained(pretrained)
            check_config_matches(model.config, vision_config, pretrained)
        elif vision_config is not None:
            model = CLIPVisionModel(CLIPVisionConfig(**vision_config))
        else:
            raise ValueError('CLIPVisionEncoder needs `pretrained` (checkpoint name or path) or '
                             '`vision_config` (CLIPVisionConfig kwargs for a randomly initialised '
                             'tower)')
        # transformers 5.2x flattened CLIPVisionModel (no ``.vision_model`` child); accept both.
        self.vision_model = getattr(model, 'vision_model', model)
        self.config = model.config
        num_layers = self.config.num_hidden_layers
        self.select_layers = [int(i) for i in select_layers]
        for index in self.select_layers:
            if not -(num_layers + 1) <= index <= num_layers:
                raise ValueError(f'select layer {index} is out of range for a tower with '
                                 f'{num_layers} layers (valid: {-(num_layers + 1)}..{num_layers})')
        if image_size is not None and image_size != self.config.image_size:
            self._resize(image_size, pos_embed_layout)
        if isinstance(dtype, torch.dtype):
            model.to(dtype)
        self.mask_padding = mask_padding
        if frozen:
            self.requires_grad_(False)
        else:
            # The layers past the deepest selected one and the final layer norm never run (see
            # forward); frozen, so DDP sees no trainable weight without a gradient.
            for layer in self.vision_model.encoder.layers[self.layers_run:]:
                layer.requires_grad_(False)
            post_norm = getattr(self.vision_model, 'post_layernorm', None)
            if post_norm is not None:
                post_norm.requires_grad_(False)

    @classmethod
    def fsdp_block_classes(cls, cfg: Dict) -> Tuple[str, ...]:
        """The transformer block class of the tower; FSDP wraps each one (``--fsdp``).

        Args:
            cfg (dict): This component's config (unused: every CLIP tower has the same blocks).

        Returns:
            tuple[str]: ``('CLIPEncoderLayer',)``.
        """
        return ('CLIPEncoderLayer', )

    @property
    def layers_run(self) -> int:
        """Transformer layers a forward runs: up to the deepest selected one (hidden state ``i``
        is the output of layer ``i``, 0 the embeddings; negative indices count from the end)."""
        num_layers = self.config.num_hidden_layers
        return max(i % (num_layers + 1) for i in self.select_layers)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def embed_dim(self) -> int:
        return self.config.hidden_size

    @property
    def num_scales(self) -> int:
        return len(self.select_layers)

    def _resize(self, image_size: int, layout: str) -> None:
        emb = self.vision_model.embeddings
        if image_size % emb.patch_size:
            raise ValueError(f'image_size {image_size} is not a multiple of the patch size '
                             f'{emb.patch_size}')
        new_grid = image_size // emb.patch_size
        with torch.no_grad():
            weight = interpolate_position_embedding(emb.position_embedding.weight, new_grid, layout)
        emb.position_embedding = nn.Embedding(weight.shape[0], weight.shape[1],
                                              device=weight.device, dtype=weight.dtype)
        emb.position_embedding.weight.data.copy_(weight)
        emb.image_size = image_size
        emb.num_patches = new_grid * new_grid
        emb.num_positions = emb.num_patches + 1
        emb.register_buffer('position_ids',
                            torch.arange(emb.num_positions, device=weight.device)[None],
                            persistent=False)
        self.config.image_size = image_size

    def save_pretrained(self, out_dir: str) -> str:
        """Write the tower as a Hugging Face ``CLIPVisionModel`` folder.

        The folder loads back with ``CLIPVisionEncoder(pretrained=out_dir)`` (or
        ``CLIPVisionModel.from_pretrained``), the way a released CLIP checkpoint does. Its config
        has this tower's ``image_size`` (after any resizing); the layers past the deepest selected
        one are written as they are (untrained when the tower was trained here).

        Args:
            out_dir (str): Output folder (created).

        Returns:
            str: ``out_dir``.
        """
        from transformers import CLIPVisionModel
        if isinstance(self.vision_model, CLIPVisionModel):
            model = self.vision_model
        else:  # transformers < 5.2: the tower is CLIPVisionModel.vision_model
            model = CLIPVisionModel(self.config)
            model.vision_model.load_state_dict(self.vision_model.state_dict())
        model.save_pretrained(out_dir)
        return out_dir

    def _padding_mask(self, valid_hw: Sequence[Tuple[int, int]], dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
        """Additive ``(B, 1, 1, 1 + P)`` mask hiding patches entirely inside the padding."""
        keep = self.valid_patches(valid_hw, device).flatten(1)
        keep = torch.cat([keep.new_ones(len(valid_hw), 1), keep], dim=1)
        mask = torch.zeros(keep.shape, dtype=dtype, device=device)
        mask.masked_fill_(~keep, torch.finfo(dtype).min)
        return mask[:, None, None, :]

    def forward(self, images: torch.Tensor,
                valid_hw: Optional[Sequence[Tuple[int, int]]] = None) -> List[torch.Tensor]:
        """Encode images.

        Args:
            images (Tensor): ``(B, 3, S, S)`` normalised images, ``S == image_size``.
            valid_hw (Sequence[tuple], optional): The (h, w) of each image before padding; used to
                mask padded patches when ``mask_padding``.

        Returns:
            list[Tensor]: One ``(B, grid*grid, C)`` patch-feature tensor per scale (CLS dropped),
            in ``select_layers`` order.
        """
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f'CLIPVisionEncoder expects {self.image_size}x{self.image_size} '
                             f'inputs, got {tuple(images.shape[-2:])}')
        vm = self.vision_model
        dtype = vm.embeddings.patch_embedding.weight.dtype
        hidden = vm.pre_layrnorm(vm.embeddings(images.to(dtype)))
        mask = None
        if self.mask_padding and valid_hw is not None:
            mask = self._padding_mask(valid_hw, hidden.dtype, hidden.device)
        num_layers = len(vm.encoder.layers)
        states = {0: hidden}
        # Layers past the deepest selected one are never run (PixelLM drops CLIP's last layer).
        for index, layer in enumerate(vm.encoder.layers[:self.layers_run], start=1):
            hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):  # older transformers return (hidden_states,)
                hidden = hidden[0]
            states[index] = hidden
        return [states[i % (num_layers + 1)][:, 1:] for i in self.select_layers]
