"""SAM's ViT image encoder (transformers' ``SamVisionEncoder``), the mask branch of LISA."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from pixellm.registry import MODELS
from .base_vision_encoder import BaseVisionEncoder
from .utils import check_config_matches


@MODELS.register_module()
class SAMImageEncoder(BaseVisionEncoder):
    """SAM's image encoder: a windowed ViT and a conv neck, giving one dense feature map.

    LISA encodes the 1024x1024 (longest side resized, bottom/right padded) image with SAM
    ViT-H and feeds the neck output, ``(B, 256, 64, 64)``, to SAM's mask decoder. Here it is
    returned flattened, ``(B, 64*64, 256)``, as every vision encoder of the toolbox returns
    its features.

    Built from a Hugging Face SAM checkpoint (``facebook/sam-vit-huge`` downloaded: a
    ``SamModel`` folder, whose vision part is read) or, with ``pretrained=None``, from a
    ``SamVisionConfig`` dict with random weights, which a converted LISA checkpoint then fills
    (:func:`pixellm.models.converters.convert_official_lisa`).

    Args:
        pretrained (str, optional): ``SamModel`` or ``SamVisionModel`` folder or hub name.
        vision_config (dict, optional): ``SamVisionConfig`` kwargs for a random encoder when
            ``pretrained`` is None (SAM ViT-H: ``hidden_size=1280, num_hidden_layers=32,
            num_attention_heads=16, global_attn_indexes=(7, 15, 23, 31)``; the other defaults
            are SAM's). Given with ``pretrained``, every field must equal the checkpoint's.
        frozen (bool): Freeze every weight, stay in eval mode and encode without autograd, as
            LISA does (``get_visual_embs`` runs under ``torch.no_grad``). Defaults to True.
        torch_dtype (str, optional): dtype of the weights (``'bfloat16'``...). None keeps the
            checkpoint's (float32 for a random encoder).
        attn_implementation (str): ``'sdpa'`` (default) or ``'eager'`` for the ViT attention.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 vision_config: Optional[Dict] = None,
                 frozen: bool = True,
                 torch_dtype: Optional[str] = None,
                 attn_implementation: str = 'sdpa',
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(frozen=frozen, init_cfg=init_cfg)
        from transformers import SamVisionConfig, SamVisionModel
        from transformers.models.sam.modeling_sam import SamVisionEncoder
        if pretrained is not None:
            model, info = SamVisionModel.from_pretrained(
                pretrained, attn_implementation=attn_implementation, output_loading_info=True)
            if info['missing_keys']:
                raise ValueError(f'{pretrained!r} lacks SAM image-encoder weights: '
                                 f'{sorted(info["missing_keys"])[:8]}')
            check_config_matches(model.config, vision_config, pretrained)
            encoder = model.vision_encoder
        elif vision_config is not None:
            config = SamVisionConfig(**vision_config)
            config._attn_implementation = attn_implementation
            encoder = SamVisionEncoder(config)
        else:
            raise ValueError('SAMImageEncoder needs `pretrained` (a SAM checkpoint folder or hub '
                             'name) or `vision_config` (SamVisionConfig kwargs for a randomly '
                             'initialised encoder)')
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
        if isinstance(dtype, torch.dtype):
            encoder.to(dtype)
        self.image_encoder = encoder
        self.config = encoder.config
        if frozen:
            self.requires_grad_(False)

    @classmethod
    def fsdp_block_classes(cls, cfg: Dict) -> Tuple[str, ...]:
        """The ViT block class of the encoder; FSDP wraps each one (``--fsdp``).

        Args:
            cfg (dict): This component's config (unused: every SAM encoder has the same blocks).

        Returns:
            tuple[str]: ``('SamVisionLayer',)``.
        """
        return ('SamVisionLayer', )

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)

    @property
    def embed_dim(self) -> int:
        """Channels of the features: the neck's output (256 for every released SAM)."""
        return int(self.config.output_channels)

    @property
    def num_scales(self) -> int:
        return 1

    def forward(self, images: torch.Tensor,
                valid_hw: Optional[Sequence[Tuple[int, int]]] = None) -> List[torch.Tensor]:
        """Encode images.

        Args:
            images (Tensor): ``(B, 3, S, S)`` normalised, bottom/right padded images,
                ``S == image_size``.
            valid_hw (Sequence[tuple], optional): Accepted for the encoder interface and not
                used: SAM attends to the padding as well (LISA feeds it the padded image).

        Returns:
            list[Tensor]: One ``(B, grid*grid, embed_dim)`` tensor, row-major over the grid.
        """
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f'SAMImageEncoder expects {self.image_size}x{self.image_size} '
                             f'inputs, got {tuple(images.shape[-2:])}')
        enc = self.image_encoder
        dtype = enc.patch_embed.projection.weight.dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = enc.patch_embed(images.to(dtype))
            if enc.pos_embed is not None:
                hidden = hidden + enc.pos_embed
            for layer in enc.layers:
                hidden = layer(hidden)
                if isinstance(hidden, tuple):  # older transformers return (hidden_states,)
                    hidden = hidden[0]
            if dtype == torch.float16:
                # SAM runs the neck in float32 under fp16 (its layer norms overflow otherwise):
                # the same module, called with float32 copies of its weights.
                neck = {k: v.float() for k, v in enc.neck.named_parameters()}
                feats = torch.func.functional_call(enc.neck, neck, (hidden.float(), ))
                feats = feats.to(dtype)
            else:
                feats = enc.neck(hidden)
        return [feats.flatten(2).transpose(1, 2)]
