"""LISA: PixelLM's flow with a CLIP view for the LLM and SAM's image embedding for the masks."""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pixellm.models.data_preprocessors.pixellm_data_preprocessor import CLIP_MEAN, CLIP_STD
from pixellm.registry import MODELS
from .pixellm import PixelLM

# SAM's pixel statistics (ImageNet's), in [0, 1] units: segment_anything's pixel_mean/std / 255.
SAM_MEAN = (0.485, 0.456, 0.406)
SAM_STD = (0.229, 0.224, 0.225)


@MODELS.register_module()
class LISA(PixelLM):
    """LISA (Lai et al., CVPR 2024): one ``[SEG]`` token per target, decoded by SAM.

    The same model as :class:`PixelLM` (text, targets, losses, generation, ``predict``) with two
    image encoders:

    * ``vision_encoder`` (CLIP ViT-L/14 at 224, select layer -2) gives the LLM its 256 image
      tokens through ``projector`` (LLaVA-v1's single Linear ``mm_projector``);
    * ``mask_encoder`` (:class:`~pixellm.models.SAMImageEncoder`, SAM ViT-H, frozen) encodes the
      1024 input; its ``(B, 64*64, 256)`` embedding goes to the pixel decoder
      (:class:`~pixellm.models.LISAMaskDecoder`) without a projector.

    The codebook is one scale of one token (``token_format='[SEG]'``) read from the hidden state
    one position before it, as LISA's ``seg_token_mask`` shifted by one.

    **The two views.** The data preprocessor pads one image tensor at the mask encoder's size:
    the pipeline resizes the longest side to 1024, the preprocessor normalises with SAM's
    statistics and pads bottom/right with zeros, exactly LISA's SAM input. The LLM's view is
    made here from that tensor, as LISA's ``CLIPImageProcessor`` makes it: the unpadded part is
    brought back to [0, 1] pixels, its shortest side resized to the CLIP size (bicubic,
    antialiased), the centre square cropped and normalised with CLIP's statistics. It differs from
    LISA's view in that LISA resizes the original image with PIL (and rounds to 8 bits), while
    here the (already longest-side resized) SAM image is resampled in float: pixel values differ
    by resampling error, not in what part of the image the LLM sees. ``llm_view='pad'`` instead
    resizes the whole padded square to the CLIP size (no crop; the LLM sees all of the image and
    the padding, which is then masked as in PixelLM when ``mask_padded_image_tokens``).

    Args:
        mask_encoder (dict): The encoder of the pixel decoder's features, e.g.
            ``SAMImageEncoder``. It sets the input size; the decoder's ``feat_channels``,
            ``grid_size`` and ``input_size`` are derived from it.
        llm_view (str): ``'center_crop'`` (LISA's CLIP view, default) or ``'pad'``; see above.
        clip_mean (Sequence[float]): Normalisation of the LLM view. Defaults to CLIP's.
        clip_std (Sequence[float]): Defaults to CLIP's.
        train_projector (bool): Train ``projector``. Defaults to False: LISA's ``train_ds.py``
            freezes ``mm_projector``.
        separate_mm_projector (bool): Must stay False (the decoder has no projector).
        llm_image_grid (int, optional): Side of the LLM's image-token grid. None (default) keeps
            the CLIP grid (16 at 224: LISA's 256 tokens).
        mask_padded_image_tokens (bool): Hide padded image tokens from the LLM; only meaningful
            with ``llm_view='pad'`` (the centre crop has no padding). Defaults to False.
        data_preprocessor (dict, optional): Defaults to ``PixelLMDataPreprocessor`` with SAM's
            mean/std at the mask encoder's size.
        **kwargs: The other :class:`PixelLM` arguments.
    """

    def __init__(self,
                 mask_encoder: Optional[Dict] = None,
                 llm_view: str = 'center_crop',
                 clip_mean: Sequence[float] = CLIP_MEAN,
                 clip_std: Sequence[float] = CLIP_STD,
                 train_projector: bool = False,
                 separate_mm_projector: bool = False,
                 llm_image_grid: Optional[int] = None,
                 mask_padded_image_tokens: bool = False,
                 data_preprocessor: Optional[Dict] = None,
                 **kwargs) -> None:
        if mask_encoder is None:
            raise ValueError('LISA needs a mask_encoder config, e.g. dict(type=\'SAMImageEncoder\''
                             ', ...): the encoder whose features the mask decoder reads')
        if separate_mm_projector:
            raise ValueError('LISA\'s decoder reads the mask encoder\'s features without a '
                             'projector; leave separate_mm_projector=False')
        if llm_view not in ('center_crop', 'pad'):
            raise ValueError(f"llm_view must be 'center_crop' or 'pad', got {llm_view!r}")
        # Read by _build_mask_encoder during PixelLM.__init__ (a plain attribute: allowed
        # before nn.Module is set up, unlike a submodule).
        self._mask_encoder_cfg = mask_encoder
        if data_preprocessor is None:
            data_preprocessor = dict(type='PixelLMDataPreprocessor', mean=SAM_MEAN, std=SAM_STD)
        super().__init__(separate_mm_projector=False, llm_image_grid=llm_image_grid,
                         mask_padded_image_tokens=mask_padded_image_tokens,
                         data_preprocessor=data_preprocessor, **kwargs)
        self.llm_view = llm_view
        self.register_buffer('clip_mean', torch.tensor(clip_mean).view(3, 1, 1),
                             persistent=False)
        self.register_buffer('clip_std', torch.tensor(clip_std).view(3, 1, 1), persistent=False)
        self.projector.requires_grad_(train_projector)

    def _build_mask_encoder(self) -> nn.Module:
        return MODELS.build(self._mask_encoder_cfg)

    def llm_view_images(self, images: torch.Tensor,
                        valid_hw: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """The LLM's view of the preprocessed (mask-encoder) input; see the class docstring.

        Args:
            images (Tensor): ``(B, 3, S, S)``, normalised with the data preprocessor's statistics
                and padded bottom/right.
            valid_hw (Sequence[tuple]): Per image, the unpadded ``(h, w)``.

        Returns:
            Tensor: ``(B, 3, s, s)`` at the vision encoder's size, CLIP-normalised.
        """
        pre = self.data_preprocessor
        s = self.vision_encoder.image_size
        views = []
        for img, (h, w) in zip(images, valid_hw):
            h, w = int(h), int(w)
            if self.llm_view == 'pad':
                pixels = img.float() * pre.std + pre.mean
                # Zero-padded (normalised) stays the value the LLM view pads with: CLIP's zero.
                valid = torch.zeros_like(pixels[:1])
                valid[:, :h, :w] = 1
                pixels = F.interpolate(pixels[None], (s, s), mode='bicubic', antialias=True,
                                       align_corners=False)[0]
                valid = F.interpolate(valid[None], (s, s), mode='bilinear',
                                      align_corners=False)[0]
                view = (pixels.clamp(0, 1) - self.clip_mean) / self.clip_std * (valid > 0.5)
            else:
                pixels = img[:, :h, :w].float() * pre.std + pre.mean
                # CLIPImageProcessor: shortest side to s (the other side truncated), centre crop.
                if h <= w:
                    size = (s, max(s, int(s * w / h)))
                else:
                    size = (max(s, int(s * h / w)), s)
                pixels = F.interpolate(pixels[None], size, mode='bicubic', antialias=True,
                                       align_corners=False)[0].clamp(0, 1)
                top, left = (size[0] - s) // 2, (size[1] - s) // 2
                view = (pixels[:, top:top + s, left:left + s] - self.clip_mean) / self.clip_std
            views.append(view)
        return torch.stack(views).to(images.dtype)

    def encode_images(self, images: torch.Tensor, valid_hw: Sequence[Tuple[int, int]]):
        """Return ``(llm_tokens (B, g'², H), llm_token_mask (B, g'²), dec_feats [(B, G², C)])``:
        the LLM tokens from the vision encoder's view, the decoder features from the mask
        encoder on ``images`` as they are."""
        b = images.shape[0]
        s = self.vision_encoder.image_size
        view = self.llm_view_images(images, valid_hw)
        if self.llm_view == 'pad':
            scale = s / images.shape[-1]
            view_hw = [(max(1, round(h * scale)), max(1, round(w * scale))) for h, w in valid_hw]
        else:
            view_hw = [(s, s)] * b
        feats = self.vision_encoder(view, view_hw)
        llm_tokens = self._llm_image_tokens(feats[0])
        k = self.llm_image_grid
        if self.mask_padded_image_tokens:
            keep = self.vision_encoder.valid_patches(view_hw, images.device)[:, None].float()
            token_mask = F.interpolate(keep, (k, k), mode='nearest').flatten(1).bool()
        else:
            token_mask = torch.ones(b, k * k, dtype=torch.bool, device=images.device)
        decoder_feats = self.mask_encoder(images, valid_hw)
        return llm_tokens, token_mask, decoder_feats
