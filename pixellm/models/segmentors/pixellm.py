"""PixelLM: an LLM that answers with text and any number of masks, assembled from config parts."""
import copy
import inspect
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.structures import InstanceData
from torch import nn

from pixellm.registry import MODELS
from pixellm.structures import PixelLMDataSample
from pixellm.utils.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

# Id written at image-feature positions of the expanded sequence; never a vocabulary id.
_IMAGE_SLOT = -1

_REQUIRED = ('vision_encoder', 'llm', 'text_processor', 'projector', 'pixel_decoder', 'loss_lm',
             'loss_mask', 'loss_dice')


def _fill(cfg: Dict, **derived) -> Dict:
    """Copy ``cfg`` and set each derived key the user did not set explicitly."""
    cfg = copy.deepcopy(dict(cfg))
    for key, value in derived.items():
        cfg.setdefault(key, value)
    return cfg


@MODELS.register_module()
class PixelLM(BaseModel):
    """PixelLM (Ren et al., CVPR 2024) built entirely from its components' configs.

    Data flow: the vision encoder gives multi-scale patch features; the select-layer features,
    downsampled to ``llm_image_grid``², go through ``projector`` into the LLM in place of the
    ``<image>`` token; the LLM answers with text in which each target is written as the codebook's
    tokens; the hidden states that emit those tokens, with every scale's features projected by
    ``mask_projector``, go to the pixel decoder, which returns one mask per target.

    Keys the configs may leave out are derived from the built parts (projector widths, decoder
    widths and grid), so a config states each fact once; when a config does set them,
    mismatches raise an error saying what to change.

    Args:
        vision_encoder (dict): e.g. ``CLIPVisionEncoder``.
        llm (dict): e.g. ``HFCausalLM``.
        text_processor (dict | TextProcessor): The tokenizer, codebook, chat template and image
            placeholder (:class:`~pixellm.text.TextProcessor`), shared with the data pipelines:
            configs set it once, as the top-level ``text_processor`` key, and ``load_config``
            hands it here. The codebook module is built from its ``codebook`` config.
        projector (dict): Vision -> LLM projector (``mm_projector``).
        pixel_decoder (dict): ``PixelDecoder``.
        loss_lm (dict): Text loss, e.g. ``LMCrossEntropyLoss``.
        loss_mask (dict): Pixel loss, ``MaskBCELoss`` or ``TargetRefinementLoss``.
        loss_dice (dict): ``MaskDiceLoss``.
        aux_heads (list[dict], optional): Auxiliary heads (:class:`~pixellm.models.BaseAuxHead`
            subclasses, none in the paper), each adding its own loss terms in training from the
            teacher-forced outputs; ``in_channels`` and ``vocab_size`` are filled in where a
            head takes them. None (default) trains with the paper's losses only.
        mask_projector (dict, optional): Projector of the decoder's features
            (``out_mm_projector``); used when ``separate_mm_projector``.
        separate_mm_projector (bool): Give the decoder its own projector (PixelLM-7B/13B). With
            False the decoder reuses ``projector``. Defaults to True.
        llm_image_grid (int, optional): Side of the image-token grid the LLM sees (official 16:
            256 tokens). None uses the encoder grid.
        mask_padded_image_tokens (bool): Hide image tokens that lie wholly in the padding from the
            LLM (official behaviour). Defaults to True.
        max_new_tokens (int): Generation budget in ``predict``. Defaults to 128.
        generation_cfg (dict, optional): Options of transformers' ``generate`` for ``predict``
            (``do_sample``, ``temperature``, ``top_p``, ``repetition_penalty``,
            ``logits_processor``...). None (default) decodes greedily, as the official
            evaluation does.
        sync_ranks (bool, optional): Keep the ranks of a distributed run in step: generation goes
            on until every rank has finished (transformers' ``synced_gpus``), and a rank whose
            batch has no target still runs the pixel decoder on a dummy target. Needed when
            parameters are sharded (DeepSpeed ZeRO-3, FSDP), where every module call gathers
            weights with a collective that all ranks must join; otherwise a rank that stops
            early leaves the others waiting forever. None (default) turns it on when more than
            one rank runs and the parameters are ZeRO-3 partitions or the model holds FSDP
            units.
        data_preprocessor (dict, optional): Defaults to ``PixelLMDataPreprocessor`` at the
            encoder size.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 vision_encoder: Optional[Dict] = None,
                 llm: Optional[Dict] = None,
                 text_processor: Optional[Dict] = None,
                 projector: Optional[Dict] = None,
                 pixel_decoder: Optional[Dict] = None,
                 loss_lm: Optional[Dict] = None,
                 loss_mask: Optional[Dict] = None,
                 loss_dice: Optional[Dict] = None,
                 aux_heads: Optional[Sequence[Dict]] = None,
                 mask_projector: Optional[Dict] = None,
                 separate_mm_projector: bool = True,
                 llm_image_grid: Optional[int] = 16,
                 mask_padded_image_tokens: bool = True,
                 max_new_tokens: int = 128,
                 generation_cfg: Optional[Dict] = None,
                 sync_ranks: Optional[bool] = None,
                 data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        given = dict(vision_encoder=vision_encoder, llm=llm, text_processor=text_processor,
                     projector=projector, pixel_decoder=pixel_decoder,
                     loss_lm=loss_lm, loss_mask=loss_mask, loss_dice=loss_dice)
        missing = [k for k in _REQUIRED if given[k] is None]
        if missing:
            raise ValueError(f'PixelLM config is missing {missing}; each of {list(_REQUIRED)} '
                             'must be a component config such as dict(type=...) (see '
                             'configs/_base_/models/pixellm_tiny.py)')
        if separate_mm_projector and mask_projector is None:
            raise ValueError('separate_mm_projector=True needs a mask_projector config (the '
                             'official out_mm_projector); add one or set '
                             'separate_mm_projector=False to share the LLM projector')
        encoder = MODELS.build(vision_encoder)
        # The encoder whose features the pixel decoder reads: the vision encoder itself, or a
        # subclass's own mask encoder (LISA's SAM), which then also sets the input size.
        mask_encoder = self._build_mask_encoder()
        feat_encoder = encoder if mask_encoder is None else mask_encoder
        size = feat_encoder.image_size
        if data_preprocessor is None:
            data_preprocessor = dict(type='PixelLMDataPreprocessor', size=size)
        elif isinstance(data_preprocessor, dict):
            data_preprocessor = _fill(data_preprocessor, size=size)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if getattr(self.data_preprocessor, 'size', size) != size:
            raise ValueError(f'data_preprocessor pads to {self.data_preprocessor.size} but the '
                             f'{"vision" if mask_encoder is None else "mask"} encoder takes '
                             f'{size}x{size} inputs; set both to one size')
        self.vision_encoder = encoder
        if mask_encoder is not None:
            self.mask_encoder = mask_encoder
        self.llm = MODELS.build(llm)
        hidden = self.llm.hidden_size
        feat_dim = encoder.embed_dim
        self.projector = MODELS.build(_fill(projector, in_channels=feat_dim, out_channels=hidden))
        self._check_width('projector', self.projector, feat_dim, hidden)
        self.separate_mm_projector = separate_mm_projector
        if mask_encoder is not None:
            # The mask encoder's features go to the decoder as they are.
            self.mask_projector = None
            mask_feat_dim = mask_encoder.embed_dim
        elif separate_mm_projector:
            self.mask_projector = MODELS.build(
                _fill(mask_projector, in_channels=feat_dim, out_channels=hidden))
            self._check_width('mask_projector', self.mask_projector, feat_dim, None)
            mask_feat_dim = self.mask_projector.out_channels
        else:
            self.mask_projector = None
            mask_feat_dim = hidden
        from pixellm.text import build_text_processor
        self.text_processor = build_text_processor(text_processor)
        self.codebook = MODELS.build(self.text_processor.codebook_cfg)
        if self.codebook.num_scales != feat_encoder.num_scales:
            raise ValueError(f'text_processor.codebook has {self.codebook.num_scales} scale(s) '
                             f'but the {"vision" if mask_encoder is None else "mask"} encoder '
                             f'returns {feat_encoder.num_scales} (select_layers='
                             f'{getattr(feat_encoder, "select_layers", None)}); make them equal')
        if list(self.codebook.tokens) != list(self.text_processor.codebook_tokens):
            raise ValueError(f'codebook {type(self.codebook).__name__} writes '
                             f'{self.codebook.tokens} but the text processor reads its tokens as '
                             f'{self.text_processor.codebook_tokens}')
        self.pixel_decoder = MODELS.build(_fill(
            pixel_decoder, in_channels=hidden, feat_channels=mask_feat_dim,
            grid_size=feat_encoder.grid_size, input_size=size,
            num_scales=self.codebook.num_scales,
            tokens_per_scale=self.codebook.tokens_per_scale))
        self.pixel_decoder.check_codebook(self.codebook.num_scales,
                                          self.codebook.tokens_per_scale)
        dec = self.pixel_decoder
        if (dec.in_channels, dec.feat_channels, dec.grid_size) != \
                (hidden, mask_feat_dim, feat_encoder.grid_size):
            raise ValueError(
                f'pixel decoder (in_channels={dec.in_channels}, feat_channels='
                f'{dec.feat_channels}, grid_size={dec.grid_size}) does not match the model '
                f'(LLM width {hidden}, decoder feature width {mask_feat_dim}, encoder grid '
                f'{feat_encoder.grid_size}); drop these keys from the decoder config to derive '
                'them')
        self.loss_lm = MODELS.build(loss_lm)
        self.loss_mask = MODELS.build(loss_mask)
        self.loss_dice = MODELS.build(loss_dice)
        self.aux_heads = nn.ModuleList(
            self._build_aux_head(head, in_channels=hidden, vocab_size=len(self.tokenizer))
            for head in (aux_heads or ()))
        self.llm_image_grid = llm_image_grid or encoder.grid_size
        self.mask_padded_image_tokens = mask_padded_image_tokens
        self.max_new_tokens = max_new_tokens
        self.generation_cfg = dict(generation_cfg or {})
        self._warned_truncation = False
        self.sync_ranks = sync_ranks
        self._extend_vocabulary()

    def _build_mask_encoder(self) -> Optional[nn.Module]:
        """The encoder whose features the pixel decoder reads, if not the vision encoder.

        Called in ``__init__`` before the module is set up (so it may only build, not assign
        submodules). PixelLM's decoder reads the vision encoder's features: None. A subclass
        returning an encoder gets it as ``self.mask_encoder``; the data preprocessor then pads
        to its ``image_size``, the decoder's width, grid and input size come from it, and its
        features reach the decoder without a projector.
        """
        return None

    @staticmethod
    def _build_aux_head(cfg: Dict, **derived):
        """Build an auxiliary head, filling in the derived keys that an ``__init__`` of its class
        or of a base class names (a subclass passing ``**kwargs`` on gets its parent's)."""
        from pixellm.models.aux_heads import BaseAuxHead
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise ValueError(f'aux_heads: each head is a config dict with a type, got {cfg!r}')
        head_cls = MODELS.get(cfg['type']) if isinstance(cfg['type'], str) else cfg['type']
        if head_cls is None:
            raise KeyError(f'aux_heads: {cfg["type"]!r} is not a registered model component; '
                           'register the head in pixellm.registry.MODELS (custom_imports)')
        named = set()
        for klass in getattr(head_cls, '__mro__', ()):
            if '__init__' in vars(klass):
                named.update(inspect.signature(klass.__init__).parameters)
        accepted = {k: v for k, v in derived.items() if k in named}
        head = MODELS.build(_fill(cfg, **accepted))
        if not isinstance(head, BaseAuxHead):
            raise TypeError(f'aux_heads: {type(head).__name__} is not a BaseAuxHead; an auxiliary '
                            'head implements loss(outputs, data_samples) -> dict of losses')
        return head

    @staticmethod
    def _check_width(name, module, in_dim, out_dim) -> None:
        if module.in_channels != in_dim or (out_dim is not None and module.out_channels != out_dim):
            raise ValueError(f'{name} maps {module.in_channels} -> {module.out_channels} channels '
                             f'but the model needs {in_dim} -> {out_dim or "any"}; drop '
                             'in_channels/out_channels from its config to derive them')

    @property
    def tokenizer(self):
        """The text processor's tokenizer."""
        return self.text_processor.tokenizer

    @property
    def use_im_start_end(self) -> bool:
        """Whether the image is written ``<im_start><image><im_end>`` (the text processor's)."""
        return self.text_processor.use_im_start_end

    @property
    def decoder_projector(self) -> nn.Module:
        """The projector between the vision encoder and the pixel decoder: ``mask_projector``
        with ``separate_mm_projector``, else the LLM's ``projector``."""
        return self.mask_projector if self.separate_mm_projector else self.projector

    def _extend_vocabulary(self) -> None:
        """Bind the codebook to its token ids and give every added token a trainable row."""
        self.codebook.bind(self.text_processor.codebook_token_ids)
        base = self.llm.base_vocab_size
        if min(self.codebook.token_ids) < base:
            raise ValueError(
                f'codebook token ids {self.codebook.token_ids} fall inside the LLM\'s '
                f'base vocabulary of {base}; their rows would be frozen. Use a tokenizer whose '
                'base vocabulary matches the LLM')
        self.llm.add_token_rows(len(self.tokenizer) - self.llm.vocab_size)

    # ------------------------------------------------------------------ shared pieces
    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def _valid_hw(self, data_samples: Sequence[PixelLMDataSample], size: int) -> List[Tuple]:
        return [tuple(s.metainfo.get('img_shape', (size, size))) for s in data_samples]

    def encode_images(self, images: torch.Tensor, valid_hw: Sequence[Tuple[int, int]]):
        """Return ``(llm_tokens (B, g'², H), llm_token_mask (B, g'²), dec_feats [(B, g², C)])``."""
        feats = self.vision_encoder(images, valid_hw)
        b = images.shape[0]
        k = self.llm_image_grid
        llm_tokens = self._llm_image_tokens(feats[0])
        if self.mask_padded_image_tokens:
            keep = self.vision_encoder.valid_patches(valid_hw, images.device)[:, None].float()
            token_mask = F.interpolate(keep, (k, k), mode='nearest').flatten(1).bool()
        else:
            token_mask = torch.ones(b, k * k, dtype=torch.bool, device=images.device)
        decoder_feats = [self.decoder_projector(f) for f in feats]
        return llm_tokens, token_mask, decoder_feats

    def _llm_image_tokens(self, select: torch.Tensor) -> torch.Tensor:
        """Select-layer features ``(B, g², C)`` -> ``llm_image_grid``² projected LLM tokens."""
        g = self.vision_encoder.grid_size
        b, _, c = select.shape
        grid = select.transpose(1, 2).reshape(b, c, g, g)
        k = self.llm_image_grid
        if k != g:
            grid = F.interpolate(grid.float(), (k, k), mode='bilinear',
                                 align_corners=False).to(select.dtype)
        return self.projector(grid.flatten(2).transpose(1, 2))

    def _splice(self, ids: torch.Tensor, image_tokens: torch.Tensor, image_mask: torch.Tensor,
                labels: Optional[torch.Tensor] = None):
        """Replace the single image id of ``ids`` with the image tokens.

        Returns:
            tuple: embeddings (L', H), expanded ids (L', ``_IMAGE_SLOT`` at image positions),
            attention mask (L',), labels (L') or None.
        """
        where = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten()
        if len(where) != 1:
            raise ValueError(f'each conversation needs exactly one image token '
                             f'({IMAGE_TOKEN_INDEX}), found {len(where)}')
        p = int(where[0])
        n = image_tokens.shape[0]
        text = torch.cat([ids[:p], ids[p + 1:]])
        text_emb = self.llm.embed(text[None])[0]
        emb = torch.cat([text_emb[:p], image_tokens.to(text_emb.dtype), text_emb[p:]])
        slot = ids.new_full((n,), _IMAGE_SLOT)
        exp_ids = torch.cat([ids[:p], slot, ids[p + 1:]])
        mask = torch.cat([ids.new_ones(p), image_mask.long(), ids.new_ones(len(ids) - p - 1)])
        exp_labels = None
        if labels is not None:
            exp_labels = torch.cat([labels[:p], labels.new_full((n,), IGNORE_INDEX),
                                    labels[p + 1:]])
        return emb, exp_ids, mask, exp_labels

    def _batch_sequences(self, ids_list, image_tokens, image_mask, labels_list=None,
                         left_pad: bool = False):
        embs, exp_ids, masks, labs = [], [], [], []
        for i, ids in enumerate(ids_list):
            e, x, m, lab = self._splice(ids.to(image_tokens.device), image_tokens[i],
                                        image_mask[i], None if labels_list is None
                                        else labels_list[i].to(image_tokens.device))
            embs.append(e), exp_ids.append(x), masks.append(m), labs.append(lab)
        length = max(len(x) for x in exp_ids)
        hidden = embs[0].shape[-1]
        b = len(ids_list)
        emb_out = embs[0].new_zeros(b, length, hidden)
        ids_out = exp_ids[0].new_full((b, length), self.pad_token_id)
        mask_out = masks[0].new_zeros(b, length)
        lab_out = exp_ids[0].new_full((b, length), IGNORE_INDEX)
        for i in range(b):
            n = len(exp_ids[i])
            sl = slice(length - n, length) if left_pad else slice(0, n)
            emb_out[i, sl] = embs[i]
            ids_out[i, sl] = exp_ids[i]
            mask_out[i, sl] = masks[i]
            if labs[i] is not None:
                lab_out[i, sl] = labs[i]
        return emb_out, ids_out, mask_out, (lab_out if labels_list is not None else None)

    @staticmethod
    def _position_ids(mask: torch.Tensor) -> torch.Tensor:
        # Padded image tokens keep their slot in the position count, as in the official code.
        pos = torch.arange(mask.shape[1], device=mask.device)[None].expand_as(mask)
        first = (mask.cumsum(1) == 0).sum(1, keepdim=True)  # left padding length
        return (pos - first).clamp(min=0)

    def _ranks_in_step(self) -> bool:
        """Whether the ranks must make the same module calls (see ``sync_ranks``)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1):
            return False
        if self.sync_ranks is not None:
            return self.sync_ranks
        # DeepSpeed ZeRO-3 marks each partitioned parameter with a ds_id; FSDP units are
        # submodules (the auto-wrapped transformer blocks).
        if hasattr(next(self.pixel_decoder.parameters()), 'ds_id'):
            return True
        from torch.distributed.fsdp import FullyShardedDataParallel
        return any(isinstance(m, FullyShardedDataParallel) for m in self.modules())

    def _decode_masks(self, targets: List[torch.Tensor],
                      dec_feats: List[torch.Tensor]) -> List[torch.Tensor]:
        """The pixel decoder on ``targets``; in step with the other ranks when required.

        A batch without targets skips the decoder's layers; with sharded parameters the other
        ranks would then wait in the decoder's weight gathers. So, in step, such a batch decodes
        one all-zero target and keeps it only as a zero-weight term of the (empty) outputs.
        """
        if sum(int(t.shape[0]) for t in targets) or not self._ranks_in_step():
            return self.pixel_decoder(targets, dec_feats)
        dummy = [targets[0].new_zeros(1, *targets[0].shape[1:])] + list(targets[1:])
        out = self.pixel_decoder(dummy, dec_feats)
        anchor = out[0].sum() * 0.0
        return [o[:0] + anchor if i == 0 else o + anchor for i, o in enumerate(out)]

    # ------------------------------------------------------------------ modes
    def forward(self, inputs: torch.Tensor, data_samples: Optional[List] = None,
                mode: str = 'tensor'):
        """mmengine entry point: ``mode`` is ``'loss'``, ``'predict'`` or ``'tensor'``."""
        if data_samples is None:
            raise ValueError('PixelLM needs data_samples carrying input_ids (and masks to train)')
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self._teacher_forced(inputs, data_samples)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def _teacher_forced(self, inputs, data_samples) -> Dict:
        valid_hw = self._valid_hw(data_samples, inputs.shape[-1])
        llm_tokens, token_mask, dec_feats = self.encode_images(inputs, valid_hw)
        labels = [s.labels for s in data_samples] if all('labels' in s for s in data_samples) \
            else None
        emb, ids, mask, labels = self._batch_sequences([s.input_ids for s in data_samples],
                                                       llm_tokens, token_mask, labels)
        out = self.llm(emb, attention_mask=mask, position_ids=self._position_ids(mask))
        positions = self.codebook.find_targets(ids, strict=True)
        states = self.codebook.gather(out['hidden'], ids, positions)
        low_res = self._decode_masks(states, dec_feats)
        masks = [self.pixel_decoder.postprocess(m, hw, tuple(s.metainfo['ori_shape']))
                 for m, hw, s in zip(low_res, valid_hw, data_samples)]
        return dict(logits=out['logits'], labels=labels, mask_logits=masks, low_res=low_res,
                    input_ids=ids, codebook_positions=positions, codebook_states=states,
                    hidden=out['hidden'], valid_hw=valid_hw)

    def loss(self, inputs: torch.Tensor, data_samples: List[PixelLMDataSample]) -> Dict:
        """Teacher-forced text and mask losses, as separate terms."""
        out = self._teacher_forced(inputs, data_samples)
        gts = []
        for i, (pred, sample) in enumerate(zip(out['mask_logits'], data_samples)):
            gt = sample.gt_instances.masks
            gt = torch.as_tensor(gt, device=pred.device)
            if gt.shape[0] != pred.shape[0]:
                raise ValueError(
                    f'sample {i} ({sample.metainfo.get("img_path", "?")}): the answer writes '
                    f'{pred.shape[0]} target(s) but {gt.shape[0]} mask(s) were given; every '
                    'target in the answer needs exactly one ground-truth mask, in answer order')
            gts.append(gt)
        losses = dict()
        losses[self.loss_lm.loss_name] = self.loss_lm(out['logits'], out['labels'])
        losses[self.loss_mask.loss_name] = self.loss_mask(out['mask_logits'], gts)
        losses[self.loss_dice.loss_name] = self.loss_dice(out['mask_logits'], gts)
        if len(self.aux_heads):
            out.update(gt_masks=gts, input_size=inputs.shape[-1],
                       llm_image_grid=self.llm_image_grid,
                       non_text_ids=torch.tensor(list(self.codebook.token_ids) +
                                                 [self.pad_token_id],
                                                 device=out['input_ids'].device))
        for head in self.aux_heads:
            for name, value in head.loss(out, data_samples).items():
                if name in losses:
                    raise ValueError(f'aux head {type(head).__name__} returns {name!r}, a loss '
                                     'name already in use; give its losses other names')
                losses[name] = value
        return losses

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor, data_samples: List[PixelLMDataSample],
                 max_new_tokens: Optional[int] = None):
        """Generate the answers with transformers' ``generate`` (see :meth:`HFCausalLM.generate`).

        Greedy unless ``generation_cfg`` says otherwise. The prompts are left-padded; image
        tokens hidden as padding keep their positions, as in training. In step with the other
        ranks (``sync_ranks``) generation goes on until every rank has finished.

        Returns:
            tuple: generated ids ``(B, T)`` (pad after EOS), the hidden states aligned with
            ``[last prompt token] + generated`` ``(B, T + 1, H)``, the aligned ids ``(B, T + 1)``,
            the decoder features and the valid image sizes.
        """
        max_new = max_new_tokens or self.max_new_tokens
        valid_hw = self._valid_hw(data_samples, inputs.shape[-1])
        llm_tokens, token_mask, dec_feats = self.encode_images(inputs, valid_hw)
        prompts = [s.prompt_ids for s in data_samples]
        emb, ids, mask, _ = self._batch_sequences(prompts, llm_tokens, token_mask, left_pad=True)
        pos = self._position_ids(mask)
        gen, states, cache = self.llm.generate(
            emb, mask, pos, max_new, self.eos_token_id, self.pad_token_id,
            synced_gpus=self._ranks_in_step(), **self.generation_cfg)
        b, t = gen.shape
        if self.codebook.hidden_offset == 0 and t:
            # The last token's own state: one more step on the cache generation returned.
            out = self.llm(self.llm.embed(gen[:, -1:]),
                           attention_mask=torch.cat([mask, mask.new_ones(b, t)], 1),
                           position_ids=pos[:, -1:] + t, past_key_values=cache, use_cache=True)
            last = out['hidden'][:, -1]
        else:
            # With the official hidden_offset=-1 the last token's own state is never read.
            last = states.new_zeros(b, states.shape[-1])
        states = torch.cat([states, last[:, None]], 1)
        aligned_ids = torch.cat([ids[:, -1:], gen], 1)
        return gen, states, aligned_ids, dec_feats, valid_hw

    def predict(self, inputs: torch.Tensor, data_samples: List[PixelLMDataSample],
                max_new_tokens: Optional[int] = None) -> List[PixelLMDataSample]:
        """Generate each answer, decode one mask per target it writes, fill ``pred_instances``.

        ``max_new_tokens`` overrides the model's generation budget for this call. An answer
        that used the whole budget without ending is marked ``pred_truncated`` (metainfo), and
        the first such batch logs a warning: the targets it would have written after the cut
        have no mask (once per model instance; each rank logs its own).
        """
        gen, states, aligned, dec_feats, valid_hw = self.generate(inputs, data_samples,
                                                                  max_new_tokens)
        # Tokens after EOS are padding; they must not be read as targets.
        after_eos = (gen == self.eos_token_id).long().cumsum(1) > 0
        truncated = ~after_eos.any(1)
        if truncated.any() and not self._warned_truncation:
            self._warned_truncation = True
            print_log(
                f'PixelLM.predict: {int(truncated.sum())} of {len(data_samples)} answers in this '
                f'batch used the whole generation budget ({gen.shape[1]} new tokens) without '
                'ending; targets after the cut get no mask. Raise model.max_new_tokens (e.g. '
                '--cfg-options model.max_new_tokens=...) if answers are meant to be that long. '
                '(Warned once.)',
                logger='current', level=logging.WARNING)
        clean = aligned.clone()
        clean[:, 1:][after_eos] = self.pad_token_id
        targets = self.codebook.gather(states, clean, strict=False)
        low_res = self._decode_masks(targets, dec_feats)
        for i, sample in enumerate(data_samples):
            ids = gen[i][~after_eos[i]].tolist()
            sample.set_metainfo(dict(pred_text=self.text_processor.decode(ids),
                                     pred_truncated=bool(truncated[i])))
            logits = self.pixel_decoder.postprocess(low_res[i], valid_hw[i],
                                                    tuple(sample.metainfo['ori_shape']))
            fg = logits > 0
            scores = (logits.sigmoid() * fg).flatten(1).sum(1) / (fg.flatten(1).sum(1) + 1e-6)
            sample.pred_instances = InstanceData(masks=fg.cpu(), scores=scores.float().cpu())
        return data_samples
