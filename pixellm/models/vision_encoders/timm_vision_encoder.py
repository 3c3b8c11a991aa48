"""Any timm ViT (OpenAI CLIP, SigLIP, EVA02...) as PixelLM's multi-scale vision encoder."""
import difflib
import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from pixellm.registry import MODELS

from .base_vision_encoder import BaseVisionEncoder

# What TimmVisionEncoder calls on the timm model; timm's ViT family (VisionTransformer, Eva...)
# has all of it, CNNs and hierarchical transformers (ResNet, Swin) do not.
_VIT_MEMBERS = ('blocks', 'patch_embed', 'num_prefix_tokens', 'forward_intermediates',
                'prune_intermediate_layers')


def create_timm_model(model_name: str, **kwargs) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)``; an unknown name gets the closest timm names.

    Args:
        model_name (str): timm architecture, optionally with a pretrained tag
            (``'vit_base_patch16_siglip_224.webli'``).
        **kwargs: ``timm.create_model`` arguments.

    Returns:
        nn.Module: The timm model.

    Raises:
        ValueError: timm has no architecture of that name.
    """
    import timm
    if not timm.is_model(model_name):
        arch = model_name.split('.')[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = (f' Closest timm names: {", ".join(close)}.' if close else
                ' timm.list_models("vit_*") lists the ViTs.')
        raise ValueError(f'timm {timm.__version__} has no model {model_name!r}.{hint}')
    return timm.create_model(model_name, **kwargs)


@MODELS.register_module()
class TimmVisionEncoder(BaseVisionEncoder):
    """A timm ViT as PixelLM's vision encoder: patch features of chosen blocks, padding masked.

    Any model of timm's ViT family works (``VisionTransformer`` and ``Eva`` classes), e.g.

    - OpenAI CLIP ViT-L/14 at 336: ``'vit_large_patch14_clip_quickgelu_336.openai'``. OpenAI's
      weights were trained with QuickGELU: the ``_quickgelu`` name builds the tower they were
      trained in (``'vit_large_patch14_clip_336.openai'`` loads them into a GELU tower, which
      timm notes changes the results).
    - SigLIP: ``'vit_base_patch16_siglip_224.webli'``, ``'vit_so400m_patch14_siglip_384'``.
    - EVA02: ``'eva02_base_patch14_224.mim_in22k'``, ``'eva02_large_patch14_clip_336'``.

    The model is built with ``timm.create_model(model_name, pretrained=..., img_size=image_size,
    num_classes=0, **model_kwargs)``. Blocks past the deepest selected one, the final norm and
    the pooling head (SigLIP's attention pool, a classifier) never run and are removed
    (``prune_intermediate_layers``), so a PixelLM checkpoint holds only the weights used.

    Layers are numbered as Hugging Face's ``hidden_states`` (and :class:`CLIPVisionEncoder`)
    number them, so a ``select_layers`` written for CLIP picks the same blocks here: ``k`` in
    ``1..depth`` is the output of the ``k``-th block (timm's ``blocks[k - 1]``, intermediate
    index ``k - 1``), and a negative index counts from the end, ``-1`` being the last block's
    output and ``-2`` the second to last (LLaVA's and PixelLM's select layer). Index ``0`` (the
    embedding output) is no block output, and timm's intermediate-feature API does not return
    it: it is refused.

    Images are normalised by the data preprocessor, whose default mean/std are CLIP's: with
    weights trained under other statistics (SigLIP's 0.5/0.5, in
    ``timm.get_pretrained_cfg(model_name).mean``), set ``data_preprocessor=dict(mean=...,
    std=...)`` in the PixelLM config. With ``image_size`` other than the weights' size, timm
    resamples the position table (bicubic) when it loads them; the PixelLM-7B/13B checkpoints
    resized CLIP's table bilinearly in their own layout, which only :class:`CLIPVisionEncoder`
    reproduces.

    Args:
        model_name (str): timm model name, optionally with a pretrained tag
            (``timm.list_models('vit_*', pretrained=True)`` lists them).
        pretrained (bool): Load timm's pretrained weights (downloaded from the Hugging Face hub,
            or read from timm's cache). Defaults to False: random weights, no download.
        checkpoint_path (str, optional): A local weights file for ``model_name`` (``.pth``,
            ``.bin`` or ``.safetensors``, as timm publishes it or as the original release wrote
            it), loaded the way timm loads its pretrained weights, through the architecture's
            checkpoint filter (which converts original layouts and resamples the position table
            to ``image_size``), without any download. Overrides ``pretrained``.
        image_size (int, optional): Input side; a multiple of the patch size. Defaults to the
            architecture's size (224 for ``vit_base_patch16_siglip_224``).
        select_layers (Sequence[int]): Block outputs, one per feature scale, in the order the
            decoder consumes them, numbered as above. Defaults to ``(-2, -11)`` (PixelLM's).
        model_kwargs (dict, optional): Further ``timm.create_model`` arguments, e.g.
            ``dict(depth=4, embed_dim=64, num_heads=2)`` for a tiny random tower, or
            ``drop_path_rate``.
        mask_padding (bool): Hide the patches that lie wholly in the padding added by
            longest-side-resize-and-pad preprocessing from attention (as keys), through the
            ``attn_mask`` argument of timm's ``forward_intermediates``; a timm version without it
            gets an error at build time. The class and register tokens stay visible. Defaults to
            True.
        frozen (bool): Freeze all weights and keep the model in eval mode. Defaults to True.
        torch_dtype (str, optional): dtype of the model (``'bfloat16'``...), cast after loading.
            None keeps float32.
        init_cfg (dict, optional): mmengine init config. timm initialises (or loads) the model
            when it is built; ``init_weights()`` applies ``init_cfg`` only and never re-runs
            timm's initialisation, which would redraw pretrained weights.
    """

    def __init__(self,
                 model_name: str,
                 pretrained: bool = False,
                 checkpoint_path: Optional[str] = None,
                 image_size: Optional[int] = None,
                 select_layers: Sequence[int] = (-2, -11),
                 model_kwargs: Optional[Dict] = None,
                 mask_padding: bool = True,
                 frozen: bool = True,
                 torch_dtype: Optional[str] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(frozen=frozen, init_cfg=init_cfg)
        kwargs = dict(model_kwargs or {})
        if image_size is not None:
            kwargs['img_size'] = image_size
        if checkpoint_path is not None:
            # timm reads a pretrained_cfg 'file' before any hub or URL source, through the same
            # filter as its downloads.
            overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
            kwargs['pretrained_cfg_overlay'] = dict(overlay, file=str(checkpoint_path))
            pretrained = True
        model = create_timm_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        missing = [m for m in _VIT_MEMBERS if not hasattr(model, m)]
        if missing:
            raise TypeError(f'timm model {model_name!r} ({type(model).__name__}) is not a ViT: it '
                            f'has no {", ".join(missing)}. TimmVisionEncoder takes timm ViTs '
                            '(VisionTransformer, Eva), which return one token per patch.')
        self.model_name = model_name
        self.vision_model = model
        # mmengine's init_weights() calls init_weights() on each child not marked is_init; timm's
        # redraws every weight, the pretrained ones included.
        model.is_init = True
        embed = model.patch_embed
        img_h, img_w = embed.img_size
        patch_h, patch_w = embed.patch_size
        if img_h != img_w or patch_h != patch_w:
            raise ValueError(f'{model_name}: PixelLM needs square images and patches, got '
                             f'{img_h}x{img_w} images and {patch_h}x{patch_w} patches')
        if img_h % patch_h:
            raise ValueError(f'image_size {img_h} is not a multiple of the patch size {patch_h} '
                             f'of {model_name}')
        self._image_size, self._patch_size = int(img_h), int(patch_h)

        depth = len(model.blocks)
        self.select_layers = [int(i) for i in select_layers]
        for index in self.select_layers:
            if not -depth <= index <= depth or index == 0:
                raise ValueError(
                    f'select layer {index} is out of range for {model_name} with {depth} blocks '
                    f'(valid: 1..{depth} or {-depth}..-1, the output of a block; 0, the '
                    'embedding output, is not a block output)')
        # Each selected layer as timm's block index, and the blocks to tap, in depth order.
        self._block_index = [i % (depth + 1) - 1 for i in self.select_layers]
        self._taps = sorted(set(self._block_index))
        model.prune_intermediate_layers(self._taps, prune_norm=True, prune_head=True)

        self.mask_padding = mask_padding
        if mask_padding and 'attn_mask' not in inspect.signature(
                model.forward_intermediates).parameters:
            import timm
            raise ValueError(f'{type(model).__name__}.forward_intermediates of timm '
                             f'{timm.__version__} takes no attn_mask, so padded patches cannot be '
                             'masked: set mask_padding=False or install a timm that has it '
                             '(requirements/runtime.txt)')
        dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
        if isinstance(dtype, torch.dtype):
            model.to(dtype)
        if frozen:
            self.requires_grad_(False)

    @classmethod
    def fsdp_block_classes(cls, cfg: Dict) -> Tuple[str, ...]:
        """The transformer block classes of the model ``cfg`` names; FSDP wraps each one.

        The model is built on the ``meta`` device (no memory, no download) to read them.

        Args:
            cfg (dict): This component's config (``model_name`` and ``model_kwargs`` are read).

        Returns:
            tuple[str]: Class names, e.g. ``('Block',)`` for ``VisionTransformer`` models,
            ``('EvaBlock',)`` for EVA02.
        """
        with torch.device('meta'):
            model = create_timm_model(cfg['model_name'], pretrained=False, num_classes=0,
                                      **dict(cfg.get('model_kwargs') or {}))
        return tuple(dict.fromkeys(type(block).__name__ for block in model.blocks))

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def patch_size(self) -> int:
        return self._patch_size

    @property
    def embed_dim(self) -> int:
        return self.vision_model.embed_dim

    @property
    def num_scales(self) -> int:
        return len(self.select_layers)

    def forward(self, images: torch.Tensor,
                valid_hw: Optional[Sequence[Tuple[int, int]]] = None) -> List[torch.Tensor]:
        """Encode images.

        Args:
            images (Tensor): ``(B, 3, S, S)`` normalised images, ``S == image_size``.
            valid_hw (Sequence[tuple], optional): The (h, w) of each image before padding; used to
                mask padded patches when ``mask_padding``.

        Returns:
            list[Tensor]: One ``(B, grid*grid, C)`` patch-feature tensor per scale (class and
            register tokens dropped), in ``select_layers`` order.
        """
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f'TimmVisionEncoder expects {self.image_size}x{self.image_size} '
                             f'inputs, got {tuple(images.shape[-2:])}')
        model = self.vision_model
        kwargs = {}
        if self.mask_padding and valid_hw is not None:
            keep = self.valid_patches(valid_hw, images.device).flatten(1)
            keep = torch.cat([keep.new_ones(len(valid_hw), model.num_prefix_tokens), keep], 1)
            # (B, 1, 1, tokens): every query sees the prefix tokens and the image's patches.
            kwargs['attn_mask'] = keep[:, None, None, :]
        dtype = model.patch_embed.proj.weight.dtype
        feats = model.forward_intermediates(images.to(dtype), indices=self._taps,
                                            output_fmt='NLC', intermediates_only=True,
                                            stop_early=True, **kwargs)
        by_block = dict(zip(self._taps, feats))
        return [by_block[i] for i in self._block_index]
