"""Pre-train a vision tower as a linear semantic-segmentation model (the demo's stand-in for CLIP's
pre-training)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmengine.structures import PixelData
from torch import nn

from pixellm.registry import MODELS


@MODELS.register_module()
class VisionEncoderPretrainer(BaseModel):
    """A vision tower with a linear per-patch classifier, trained on semantic label maps.

    PixelLM starts from a CLIP tower pre-trained on image-text pairs. The offline demo cannot
    download one, and a randomly initialised tiny tower trained inside PixelLM learns colour (which
    tells the demo's objects apart) but hardly shape: after the demo's 2400 iterations a linear
    probe on the patch at an object's centre reads its colour 100% of the time and its shape 28%
    (chance 20%). Trained alone on the label maps for 2000-3000 steps, the tower's object patches
    give the shape to a linear probe 96-98% of the time. This model is the first of the demo's two
    stages: it trains the same tower, alone, to label every patch with the category of its
    objects (``RenderSemanticMap`` on the MUSE training images), then
    ``SaveVisionEncoderHook`` writes the tower as a Hugging Face folder that PixelLM loads with
    ``vision_encoder.pretrained``, as it loads ``openai/clip-vit-large-patch14-336``.

    A linear layer on the features of ``select_layers[feature_index]`` gives one logit vector per
    patch. The loss is each patch's cross-entropy against a target taken from the class
    distribution of its pixels in the label map resized (nearest) to the resized image, leaving
    out the padding and ``ignore_index``: the distribution itself (``target='fractions'``) or one
    class (``'majority'``, the demo's). Predictions upsample the logits of the patches that hold
    the image bilinearly to the original size.

    Args:
        vision_encoder (dict): Config of the tower (``CLIPVisionEncoder``; set ``frozen=False``).
        num_classes (int): Label values ``0..num_classes-1`` (0 is background; COCO category
            ids go up to 90, LVIS ones to 1203, the demo's shapes to 5).
        feature_index (int): Which of the tower's ``select_layers`` the classifier reads.
            Defaults to 0 (the one PixelLM's LLM reads).
        ignore_index (int): Label value left out of the loss. Defaults to 255.
        target (str): ``'fractions'``: each patch's target is the class distribution of its
            pixels; ``'majority'``: one class per patch (see :meth:`majority`). Defaults to
            ``'fractions'``.
        min_object_fraction (float): For ``'majority'``: the object share that makes a patch an
            object patch. Defaults to 0.25.
        data_preprocessor (dict, optional): Defaults to ``PixelLMDataPreprocessor`` padding to
            the tower's input size.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 vision_encoder: Dict,
                 num_classes: int,
                 feature_index: int = 0,
                 ignore_index: int = 255,
                 target: str = 'fractions',
                 min_object_fraction: float = 0.25,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        if target not in ('fractions', 'majority'):
            raise ValueError(f"target must be 'fractions' or 'majority', got {target!r}")
        encoder = MODELS.build(vision_encoder)
        size = encoder.image_size
        if data_preprocessor is None:
            data_preprocessor = dict(type='PixelLMDataPreprocessor', size=size)
        elif isinstance(data_preprocessor, dict):
            data_preprocessor = dict(data_preprocessor)
            data_preprocessor.setdefault('size', size)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if getattr(self.data_preprocessor, 'size', size) != size:
            raise ValueError(f'data_preprocessor pads to {self.data_preprocessor.size} but the '
                             f'vision encoder takes {size}x{size} inputs')
        if not 0 <= feature_index < encoder.num_scales:
            raise ValueError(f'feature_index {feature_index} is out of range for a tower with '
                             f'{encoder.num_scales} selected layers')
        if num_classes < 2:
            raise ValueError(f'num_classes must be at least 2 (background and a class), got '
                             f'{num_classes}')
        self.vision_encoder = encoder
        self.num_classes = int(num_classes)
        self.feature_index = int(feature_index)
        self.ignore_index = int(ignore_index)
        self.target = target
        self.min_object_fraction = float(min_object_fraction)
        self.classifier = nn.Linear(encoder.embed_dim, self.num_classes)

    def _patch_logits(self, inputs: torch.Tensor,
                      valid_hw: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """``(B, num_classes, g, g)`` logits, one per patch."""
        feats = self.vision_encoder(inputs, valid_hw)[self.feature_index]
        g = self.vision_encoder.grid_size
        logits = self.classifier(feats.float())  # (B, g*g, K)
        return logits.transpose(1, 2).reshape(len(inputs), self.num_classes, g, g)

    def _logits(self, inputs: torch.Tensor,
                valid_hw: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """``(B, num_classes, S, S)`` logits at the padded input size (bilinear upsampling)."""
        return F.interpolate(self._patch_logits(inputs, valid_hw), inputs.shape[-2:],
                             mode='bilinear', align_corners=False)

    @staticmethod
    def _valid_hw(inputs: torch.Tensor, data_samples: Sequence) -> List[Tuple[int, int]]:
        size = inputs.shape[-1]
        return [tuple(s.metainfo.get('img_shape', (size, size))) for s in data_samples]

    def targets(self, inputs: torch.Tensor, data_samples: Sequence) -> torch.Tensor:
        """``(B, S, S)`` int64 pixel labels: each label map resized (nearest, pixel centres) to its
        sample's ``img_shape`` at the top left, ``ignore_index`` in the padding."""
        size = inputs.shape[-2:]
        out = torch.full((len(data_samples), *size), self.ignore_index, dtype=torch.long,
                         device=inputs.device)
        for i, sample in enumerate(data_samples):
            if 'gt_sem_seg' not in sample:
                raise KeyError('VisionEncoderPretrainer needs gt_sem_seg in every data sample; '
                               'put RenderSemanticMap in the pipeline before PackPixelLMInputs')
            label = sample.gt_sem_seg.data.to(inputs.device)
            h, w = (int(v) for v in sample.metainfo.get('img_shape', label.shape[-2:]))
            # 'nearest-exact' samples pixel centres, as the image's PIL resize does.
            label = F.interpolate(label[None].float(), (h, w), mode='nearest-exact')[0, 0].long()
            out[i, :h, :w] = label
        bad = (out != self.ignore_index) & ((out < 0) | (out >= self.num_classes))
        if bad.any():
            raise ValueError(f'label value {int(out[bad][0])} is outside '
                             f'0..{self.num_classes - 1}; raise num_classes or map the value to '
                             'ignore_index')
        return out

    def patch_targets(self, pixel_targets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class distribution of each patch's labelled pixels.

        Args:
            pixel_targets (Tensor): ``(B, S, S)`` from :meth:`targets`.

        Returns:
            tuple: ``(B, num_classes, g, g)`` fractions (summing to 1 over classes where a
            patch has a labelled pixel) and the ``(B, g, g)`` bool mask of such patches.
        """
        p = self.vision_encoder.patch_size
        valid = pixel_targets != self.ignore_index
        onehot = F.one_hot(pixel_targets.clamp(0, self.num_classes - 1) * valid,
                           self.num_classes).permute(0, 3, 1, 2).float()
        onehot = onehot * valid[:, None]
        counts = F.avg_pool2d(onehot, p, p) * (p * p)
        total = counts.sum(1)
        has_label = total > 0
        return counts / total.clamp(min=1)[:, None], has_label

    def loss(self, inputs: torch.Tensor, data_samples: Sequence) -> Dict[str, torch.Tensor]:
        """Cross-entropy of each patch's logits against the class distribution of its pixels
        (padding and ``ignore_index`` left out); patches with no labelled pixel do not count."""
        logits = self._patch_logits(inputs, self._valid_hw(inputs, data_samples))
        dist, has_label = self.patch_targets(self.targets(inputs, data_samples))
        if self.target == 'majority':
            dist = self.majority(dist)
        per_patch = -(dist * F.log_softmax(logits, dim=1)).sum(1)
        return dict(loss_seg=per_patch[has_label].mean())

    def majority(self, dist: torch.Tensor) -> torch.Tensor:
        """One-hot patch labels from class fractions: the most frequent object class where
        objects (classes other than 0) cover at least ``min_object_fraction`` of the patch's
        labelled pixels, background otherwise."""
        objects = dist[:, 1:]
        best = objects.argmax(1) + 1
        label = torch.where(objects.sum(1) >= self.min_object_fraction, best,
                            torch.zeros_like(best))
        return F.one_hot(label, self.num_classes).permute(0, 3, 1, 2).to(dist.dtype)

    def predict(self, inputs: torch.Tensor, data_samples: Sequence) -> List:
        """Return the samples with ``pred_sem_seg`` (``(1, H, W)`` labels at the original size)
        and ``seg_logits`` (``(num_classes, H, W)``), as mmseg's segmentors do. With the
        ``gt_sem_seg`` the samples came with (full resolution, from ``RenderSemanticMap``) they
        are what mmseg's ``IoUMetric`` reads: the stage-1 config's test evaluator."""
        patch_logits = self._patch_logits(inputs, self._valid_hw(inputs, data_samples))
        p = self.vision_encoder.patch_size
        for i, sample in enumerate(data_samples):
            h, w = (int(v) for v in sample.metainfo['img_shape'])
            ori_h, ori_w = (int(v) for v in sample.metainfo['ori_shape'])
            # Only the patches that hold image pixels (the padding's logits never got a loss):
            # upsampled to their pixel extent, cropped to the image, resized to the original.
            gh, gw = -(-h // p), -(-w // p)
            block = F.interpolate(patch_logits[i:i + 1, :, :gh, :gw], (gh * p, gw * p),
                                  mode='bilinear', align_corners=False)[:, :, :h, :w]
            full = F.interpolate(block, (ori_h, ori_w), mode='bilinear', align_corners=False)[0]
            sample.seg_logits = PixelData(data=full)
            sample.pred_sem_seg = PixelData(data=full.argmax(0, keepdim=True))
        return list(data_samples)

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List] = None,
                mode: str = 'tensor'):
        """mmengine entry point: ``mode`` is ``'loss'``, ``'predict'`` or ``'tensor'`` (the
        ``(B, num_classes, S, S)`` logits)."""
        if mode == 'tensor':
            size = inputs.shape[-1]
            valid = self._valid_hw(inputs, data_samples) if data_samples is not None \
                else [(size, size)] * len(inputs)
            return self._logits(inputs, valid)
        if data_samples is None:
            raise ValueError(f"mode {mode!r} needs data_samples")
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")
