"""A transformers causal LM (LLaMA family) as PixelLM's language backbone, with LoRA and new token rows."""
import contextlib
import importlib.util
import inspect
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn

from pixellm.registry import MODELS

_ARCHITECTURES = {
    'llama': ('LlamaConfig', 'LlamaForCausalLM'),
    'mistral': ('MistralConfig', 'MistralForCausalLM'),
    'qwen2': ('Qwen2Config', 'Qwen2ForCausalLM'),
}


def register_llm_architecture(model_type: str, config_class: str, model_class: str,
                              force: bool = False) -> None:
    """Let ``HFCausalLM`` build another transformers causal LM.

    After ``register_llm_architecture('qwen3', 'Qwen3Config', 'Qwen3ForCausalLM')``,
    ``llm_config=dict(model_type='qwen3', ...)`` builds that model, LoRA, added token rows,
    generation, export and ``--fsdp`` (its ``_no_split_modules``) included.

    Args:
        model_type (str): The ``model_type`` that configs name.
        config_class (str): Name of the transformers config class.
        model_class (str): Name of the transformers ``*ForCausalLM`` class.
        force (bool): Replace an existing entry. Defaults to False.

    Raises:
        ValueError: ``model_type`` is taken by other classes (without ``force``), or
            transformers has no such classes.
    """
    import transformers
    missing = [n for n in (config_class, model_class) if not hasattr(transformers, n)]
    if missing:
        raise ValueError(f'transformers {transformers.__version__} has no {missing}')
    entry = (config_class, model_class)
    if not force and _ARCHITECTURES.get(model_type, entry) != entry:
        raise ValueError(f'model_type {model_type!r} already builds {_ARCHITECTURES[model_type]}; '
                         'pass force=True to replace it')
    _ARCHITECTURES[model_type] = entry


def registered_llm_architectures() -> Dict[str, Tuple[str, str]]:
    """``model_type`` -> (config class, causal-LM class) names that ``HFCausalLM`` builds."""
    return dict(_ARCHITECTURES)


def _architecture(model_type: str) -> Tuple[type, type]:
    """The transformers config and ``*ForCausalLM`` classes of ``llm_config['model_type']``."""
    import transformers
    if model_type not in _ARCHITECTURES:
        raise ValueError(f'unknown llm_config model_type {model_type!r}; known: '
                         f'{sorted(_ARCHITECTURES)}')
    config_name, model_name = _ARCHITECTURES[model_type]
    return getattr(transformers, config_name), getattr(transformers, model_name)


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == 'auto':
        return 'auto'
    return getattr(torch, dtype)


QUANTIZATIONS = ('8bit', '4bit')
ATTN_IMPLEMENTATIONS = ('sdpa', 'eager', 'flash_attention_2', 'auto')


def resolve_attn_implementation(name: str) -> str:
    """The attention kernel to ask transformers for; ``'auto'`` picks one for this machine.

    Args:
        name (str): One of :data:`ATTN_IMPLEMENTATIONS`.

    Returns:
        str: ``name``, or for ``'auto'``: ``'flash_attention_2'`` when ``flash_attn`` is
        installed and CUDA is available, else ``'sdpa'`` (PyTorch's fused attention).

    Raises:
        ValueError: Unknown name.
    """
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got '
                         f'{name!r}')
    if name != 'auto':
        return name
    if importlib.util.find_spec('flash_attn') is not None and torch.cuda.is_available():
        return 'flash_attention_2'
    return 'sdpa'



def bitsandbytes_load_kwargs(quantization: Optional[str], pretrained: Optional[str],
                             dtype: Any) -> Dict:
    """``from_pretrained`` kwargs that load an LLM in 8 or 4 bits, after checking it can be done.

    Args:
        quantization (str, optional): None, ``'8bit'`` or ``'4bit'``.
        pretrained (str, optional): The checkpoint; quantised loading needs one.
        dtype: The compute dtype for 4-bit layers (bfloat16 when None).

    Returns:
        dict: ``{}`` for None, else ``quantization_config`` and ``device_map``.

    Raises:
        ValueError: Unknown ``quantization``, or no ``pretrained`` checkpoint to quantise.
        RuntimeError: bitsandbytes is not installed or there is no CUDA device.
    """
    if quantization is None:
        return {}
    if quantization not in QUANTIZATIONS:
        raise ValueError(f'quantization must be one of {QUANTIZATIONS} or None, got '
                         f'{quantization!r}')
    if pretrained is None:
        raise ValueError(f'{quantization} loading quantises pretrained weights as they load; '
                         'this LLM is built from llm_config with random weights. Export the '
                         'model (tools/model_converters/export_hf.py) and load the folder')
    if importlib.util.find_spec('bitsandbytes') is None:
        raise RuntimeError(f'{quantization} loading needs bitsandbytes: pip install '
                           'bitsandbytes')
    if not torch.cuda.is_available():
        raise RuntimeError(f'{quantization} loading with bitsandbytes needs a CUDA device; '
                           'none is available')
    from transformers import BitsAndBytesConfig
    if quantization == '8bit':
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                                    bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=compute)
    return dict(quantization_config=config, device_map={'': torch.cuda.current_device()})


def _check_loading_info(pretrained: str, class_name: str, info: Dict) -> None:
    """Refuse a checkpoint that leaves LLM weights at random; log the weights it does not use.

    A LLaVA v1 folder holds, besides LLaMA, ``model.mm_projector.*`` (one Linear) and in some
    releases its CLIP tower. PixelLM does not reuse them: the official code replaces the Linear
    with a new two-layer MLP under the same name, so ``from_pretrained`` drops LLaVA's weights
    (different keys and shapes) and the MLP starts from scratch, and it loads CLIP from its own
    checkpoint. The projectors and the vision encoder here are likewise built on their own.

    Args:
        pretrained (str): The checkpoint name or path, for the messages.
        class_name (str): The transformers class that was loaded.
        info (dict): ``output_loading_info`` of ``from_pretrained``.

    Raises:
        ValueError: Some weights of the LLM are missing from the checkpoint.
    """
    missing = sorted(info.get('missing_keys') or ())
    if missing:
        raise ValueError(
            f'{pretrained!r} lacks {len(missing)} weight(s) of {class_name}, which would be left '
            f'at random values: {missing[:10]}{" ..." if len(missing) > 10 else ""}. Is it a '
            'checkpoint of the architecture llm_config.model_type names (a LLaVA v1 folder for '
            'PixelLM)?')
    unexpected = sorted(info.get('unexpected_keys') or ())
    if unexpected:
        print_log(
            f'HFCausalLM: {len(unexpected)} weight(s) of {pretrained!r} are not part of '
            f'{class_name} and are not used: {unexpected[:10]}'
            f'{" ..." if len(unexpected) > 10 else ""}. A LLaVA v1 mm_projector is among them '
            'on purpose: the official PixelLM drops it too and trains a new MLP projector.',
            logger='current')


@MODELS.register_module()
class HFCausalLM(BaseModule):
    """Language backbone over a Hugging Face causal LM, optionally adapted with LoRA.

    All version-sensitive transformers/peft calls of the toolbox live in this class.

    Tokens added to the tokenizer after the checkpoint (``<im_start>``/``<im_end>``, the codebook
    tokens...) get their own trainable rows (:meth:`add_token_rows`). The base vocabulary table
    and LM head are frozen by default, so training touches a few vectors; with
    ``train_token_tables=True`` they train whole, as the official PixelLM ``train_ds.py``
    unfreezes ``embed_tokens`` and ``lm_head`` (the PixelLM-7B/13B recipes do this).

    Args:
        pretrained (str, optional): Hub name or local path of a checkpoint (e.g. a LLaVA v1
            checkpoint), loaded with the architecture ``llm_config['model_type']`` names. When
            None the model is built from ``llm_config`` with random weights.
        llm_config (dict, optional): Config kwargs; ``model_type`` picks the architecture
            (``'llama'`` by default).
        torch_dtype (str, optional): Weight dtype, e.g. ``'bfloat16'``.
        attn_implementation (str): ``'sdpa'`` (default), ``'eager'``, ``'flash_attention_2'`` or
            ``'auto'``: FlashAttention-2 when the ``flash_attn`` package is installed and a CUDA
            device is present, else sdpa (see :func:`resolve_attn_implementation`).
        gradient_checkpointing (bool): Recompute decoder layers in backward. Defaults to False.
        lora (dict, optional): ``dict(r=8, alpha=16, dropout=0.05, target_modules=['q_proj',
            'v_proj'])`` wraps the model with peft LoRA (PixelLM's settings). None trains no
            LLM weight except the new token rows.
        freeze (bool): Freeze the base weights. Defaults to True; False with ``lora=None`` is
            full fine-tuning.
        train_token_tables (bool): Train the whole embedding table and LM head, base rows
            included, as the official ``train_ds.py`` does. The two tables are then kept in
            float32, like the added rows (the optimizer updates them in full precision); the
            embedding output is cast to the decoder's dtype and the LM head runs in the hidden
            states' dtype. Defaults to False: only the added rows train.
        base_vocab_size (int, optional): How many rows of the checkpoint's embedding table and
            LM head are base vocabulary. The rows past it (the added tokens that
            :meth:`fold_added_rows` wrote into the tables of an exported folder) become the
            trainable added rows again, as if :meth:`add_token_rows` had made them. None (the
            default) keeps every row as a base row.
        quantization (str, optional): ``'8bit'`` or ``'4bit'`` loads the ``pretrained`` weights
            with bitsandbytes (LLM.int8 / NF4) on the current CUDA device, for inference, as
            the seed's chat ``--load_in_8bit/--load_in_4bit``. Needs bitsandbytes, CUDA and
            ``pretrained``; the added token rows stay unquantised. Defaults to None.
        init_cfg (dict, optional): mmengine init config.
    """

    def __init__(self,
                 pretrained: Optional[str] = None,
                 llm_config: Optional[Dict] = None,
                 torch_dtype: Optional[str] = None,
                 attn_implementation: str = 'sdpa',
                 gradient_checkpointing: bool = False,
                 lora: Optional[Dict] = None,
                 freeze: bool = True,
                 train_token_tables: bool = False,
                 base_vocab_size: Optional[int] = None,
                 quantization: Optional[str] = None,
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        dtype = _resolve_dtype(torch_dtype)
        attn_implementation = resolve_attn_implementation(attn_implementation)
        load_kwargs = bitsandbytes_load_kwargs(quantization, pretrained, dtype)
        cfg = dict(llm_config or {})
        config_cls, model_cls = _architecture(cfg.pop('model_type', 'llama'))
        if pretrained is not None:
            # The architecture class comes from llm_config, not from the checkpoint's config:
            # LLaVA v1 checkpoints say model_type="llava", which transformers maps to its own
            # (non causal-LM) LLaVA class; their language model is a plain LLaMA.
            config = config_cls.from_pretrained(pretrained)
            model, info = model_cls.from_pretrained(pretrained, config=config, dtype=dtype,
                                                    attn_implementation=attn_implementation,
                                                    output_loading_info=True, **load_kwargs)
            _check_loading_info(pretrained, model_cls.__name__, info)
        elif llm_config is not None:
            config = config_cls(**cfg)
            config._attn_implementation = attn_implementation
            model = model_cls(config)
            if isinstance(dtype, torch.dtype):
                model.to(dtype)
        else:
            raise ValueError('HFCausalLM needs `pretrained` (checkpoint name or path) or '
                             '`llm_config` (config kwargs for a randomly initialised model)')
        added_embed, added_head = self._split_added_rows(model, base_vocab_size)
        if freeze:
            model.requires_grad_(False)
        if gradient_checkpointing:
            # Non-reentrant checkpointing works with frozen inputs_embeds (no input grads needed).
            # transformers 5.2x renamed the switch; older releases only have the first name.
            enable = getattr(model, 'activation_checkpointing_enable', None) or \
                model.gradient_checkpointing_enable
            kwargs_name = 'activation_checkpointing_kwargs' if enable.__name__.startswith(
                'activation') else 'gradient_checkpointing_kwargs'
            enable(**{kwargs_name: dict(use_reentrant=False)})
        model.config.use_cache = False
        self.base_vocab_size = model.get_input_embeddings().weight.shape[0]
        self.lora_cfg = dict(lora) if lora else None
        if lora:
            model = self._wrap_lora(model, lora)
        self.model = model
        self.train_token_tables = bool(train_token_tables)
        if self.train_token_tables:
            self._unfreeze_token_tables()
        # transformers >= 5.2x renamed ``past_key_values`` to ``cache``; read the name once here
        # rather than inspecting the signature on every decoding step.
        decoder_params = inspect.signature(self.hf_model.get_decoder().forward).parameters
        self._cache_key = 'cache' if 'cache' in decoder_params else 'past_key_values'
        # The added rows are the only trained embeddings; they stay float32 whatever the LLM's
        # dtype, because mmengine's optimizer keeps no fp32 master copy of bf16 parameters.
        self.new_embed = nn.Parameter(added_embed)
        self.new_head = nn.Parameter(added_head)

    @classmethod
    def fsdp_block_classes(cls, cfg: Dict) -> Tuple[str, ...]:
        """The transformer block classes of the LLM ``cfg`` builds; FSDP wraps each one.

        Read from the transformers class that ``llm_config['model_type']`` names (its
        ``_no_split_modules``), without building the model. :func:`pixellm.engine.fsdp.apply_fsdp`
        calls it for ``--fsdp``.

        Args:
            cfg (dict): This component's config, e.g. ``dict(type='HFCausalLM',
                llm_config=dict(model_type='qwen2', ...))``.

        Returns:
            tuple[str]: Class names, e.g. ``('LlamaDecoderLayer',)``.

        Raises:
            ValueError: Unknown ``model_type``, or its class names no block class.
        """
        model_type = dict(cfg.get('llm_config') or {}).get('model_type', 'llama')
        _, model_cls = _architecture(model_type)
        blocks = tuple(model_cls._no_split_modules or ())
        if not blocks:
            raise ValueError(f'{model_cls.__name__} names no decoder block class '
                             '(_no_split_modules); --fsdp would leave the whole LLM in one unit')
        return blocks

    def _unfreeze_token_tables(self) -> None:
        """Make the embedding table and LM head trainable, in float32 (after peft froze them)."""
        hf = self.hf_model
        head = hf.get_output_embeddings()
        if type(head) is not nn.Linear:
            # logits() applies the float32 head as a plain linear map in the hidden states' dtype.
            raise ValueError(f'train_token_tables needs the LM head to be a plain nn.Linear, got '
                             f'{type(head).__name__} (a LoRA or quantised lm_head?)')
        # Module.float() converts a tied table once: the head keeps sharing the embedding's weight.
        for table in (hf.get_input_embeddings(), head):
            if table.weight.is_floating_point():
                table.float()
            table.requires_grad_(True)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the decoder stack, which the input embeddings are cast to."""
        decoder = self.hf_model.get_decoder()
        norm = getattr(decoder, 'norm', None)
        if norm is not None and getattr(norm, 'weight', None) is not None:
            return norm.weight.dtype
        return self.hf_model.get_input_embeddings().weight.dtype

    @staticmethod
    def _split_added_rows(model: nn.Module, base_vocab_size: Optional[int]):
        """Cut the rows past ``base_vocab_size`` off the tables; return them as float32 copies."""
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        rows, hidden = emb.shape
        if base_vocab_size is None or base_vocab_size == rows:
            return torch.empty(0, hidden), torch.empty(0, hidden)
        if not 0 < base_vocab_size < rows:
            raise ValueError(f'base_vocab_size={base_vocab_size} but the LLM\'s embedding table '
                             f'has {rows} rows; it must lie in [1, {rows}]')
        added_embed = emb.detach()[base_vocab_size:].float().clone()
        added_head = head.detach()[base_vocab_size:].float().clone()
        # Shrinking keeps the first rows as they are (nothing is initialised) and re-ties tied
        # tables; it also updates config.vocab_size.
        model.resize_token_embeddings(base_vocab_size, mean_resizing=False)
        return added_embed, added_head

    def merge_lora(self) -> None:
        """Merge the LoRA adapters into the base weights and drop the peft wrapper, in place.

        Uses peft's ``merge_and_unload`` (with its NaN check); afterwards ``self.model`` is the
        plain transformers model and the outputs are the same up to rounding. Does nothing
        without LoRA.
        """
        if self.lora_cfg is None:
            return
        self.model = self.model.merge_and_unload(safe_merge=True)
        self.lora_cfg = None

    def fold_added_rows(self) -> None:
        """Move the added rows into the transformers model's own tables, in place.

        The inverse of ``base_vocab_size``: afterwards the embedding table and LM head hold the
        base rows followed by the added rows (in the tables' dtype), ``base_vocab_size`` equals
        ``vocab_size`` and ``new_embed``/``new_head`` are empty, so the outputs are unchanged up
        to rounding and :attr:`hf_model` saves with ``save_pretrained`` as a complete
        ``*ForCausalLM``. Tied tables whose added rows differ (the embedding and head rows are
        trained apart) are untied, with ``tie_word_embeddings=False`` in the config.
        """
        num = self.new_embed.shape[0]
        if num == 0:
            return
        hf = self.hf_model
        if getattr(hf.get_output_embeddings(), 'bias', None) is not None:
            raise ValueError('fold_added_rows does not support an LM head with a bias')
        emb = hf.get_input_embeddings().weight
        head = hf.get_output_embeddings().weight
        new_embed = self.new_embed.detach().to(emb.dtype)
        new_head = self.new_head.detach().to(head.dtype)
        if head is emb and not torch.equal(new_embed, new_head):
            # resize_token_embeddings resizes the shared Parameter in place, so the head needs a
            # Parameter of its own first; the config keeps from_pretrained from re-tying them.
            hf.config.tie_word_embeddings = False
            hf.get_output_embeddings().weight = nn.Parameter(head.detach().clone(),
                                                             requires_grad=head.requires_grad)
        base = self.base_vocab_size
        # Growing with resize_token_embeddings keeps transformers' own bookkeeping (config and
        # model vocab_size, tying); its initialisation of the new rows is overwritten below.
        hf.resize_token_embeddings(base + num, mean_resizing=False)
        with torch.no_grad():
            hf.get_input_embeddings().weight[base:] = new_embed
            hf.get_output_embeddings().weight[base:] = new_head
        self.base_vocab_size = base + num
        self.new_embed = nn.Parameter(self.new_embed.data.new_empty(0, self.hidden_size))
        self.new_head = nn.Parameter(self.new_head.data.new_empty(0, self.hidden_size))

    @staticmethod
    def _wrap_lora(model: nn.Module, lora: Dict) -> nn.Module:
        from peft import LoraConfig, get_peft_model
        known = {'r', 'alpha', 'dropout', 'target_modules', 'bias', 'exclude_modules'}
        unknown = set(lora) - known
        if unknown:
            raise ValueError(f'unknown LoRA option(s) {sorted(unknown)}; known: {sorted(known)}')
        config = LoraConfig(r=lora.get('r', 8), lora_alpha=lora.get('alpha', 16),
                            lora_dropout=lora.get('dropout', 0.05),
                            target_modules=list(lora.get('target_modules', ['q_proj', 'v_proj'])),
                            bias=lora.get('bias', 'none'), task_type='CAUSAL_LM')
        return get_peft_model(model, config)

    @property
    def hf_model(self) -> nn.Module:
        """The transformers ``*ForCausalLM`` module (under the peft wrapper when LoRA is on)."""
        model = self.model
        if hasattr(model, 'get_base_model'):
            model = model.get_base_model()
        return model

    @property
    def hidden_size(self) -> int:
        return self.hf_model.config.hidden_size

    @property
    def vocab_size(self) -> int:
        """Base vocabulary plus the added rows."""
        return self.base_vocab_size + self.new_embed.shape[0]

    def add_token_rows(self, num: int) -> List[int]:
        """Append ``num`` trainable rows to the embedding table and the LM head.

        New rows start at the mean of the frozen base rows, as transformers initialises resized
        embeddings, so a new token starts as an "average" word rather than noise.

        Returns:
            list[int]: The ids the new rows answer to.
        """
        if num < 0:
            raise ValueError(f'num must be >= 0, got {num}')
        first = self.vocab_size
        if num == 0:
            return []
        emb = self.hf_model.get_input_embeddings().weight
        head = self.hf_model.get_output_embeddings().weight
        with torch.no_grad():
            new_e = emb.float().mean(0, keepdim=True).repeat(num, 1)
            new_h = head.float().mean(0, keepdim=True).repeat(num, 1)
        if emb.device.type == 'meta':
            new_e, new_h = torch.empty_like(new_e), torch.empty_like(new_h)
        self.new_embed = nn.Parameter(torch.cat([self.new_embed.data.to(new_e.device), new_e]))
        self.new_head = nn.Parameter(torch.cat([self.new_head.data.to(new_h.device), new_h]))
        return list(range(first, first + num))

    def _base_tables(self) -> Tuple[nn.Module, nn.Module]:
        """transformers' own embedding table and LM head (also inside :meth:`full_vocabulary`)."""
        swapped = getattr(self, '_swapped_tables', None)
        if swapped is not None:
            return swapped
        hf = self.hf_model
        return hf.get_input_embeddings(), hf.get_output_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids, routing ids past the base vocabulary to the trainable rows."""
        table = self._base_tables()[0]
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
            raise ValueError(f'token ids must lie in [0, {self.vocab_size}), got '
                             f'[{int(input_ids.min())}, {int(input_ids.max())}]; was the '
                             'tokenizer extended without add_token_rows()?')
        base = table(input_ids.clamp(max=self.base_vocab_size - 1))
        if self.train_token_tables:
            base = base.to(self.compute_dtype)
        is_new = input_ids >= self.base_vocab_size
        if self.new_embed.shape[0] == 0:
            return base
        # F.embedding, not self.new_embed[ids]: the backward of advanced indexing adds the
        # gradients of repeated ids with atomic adds from several CPU threads, in a varying order.
        new = F.embedding((input_ids - self.base_vocab_size).clamp(min=0), self.new_embed)
        return torch.where(is_new[..., None], new.to(base.dtype), base)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits over the base vocabulary followed by the added rows."""
        head = self._base_tables()[1]
        if self.train_token_tables:
            # The float32 table runs in the hidden states' dtype (autocast does the same cast).
            base = F.linear(hidden, head.weight.to(hidden.dtype),
                            None if head.bias is None else head.bias.to(hidden.dtype))
        else:
            base = head(hidden)
        if self.new_head.shape[0] == 0:
            return base
        return torch.cat([base, hidden @ self.new_head.to(hidden.dtype).t()], dim=-1)

    @contextlib.contextmanager
    def full_vocabulary(self) -> Iterator[None]:
        """Within the block, transformers' own embedding and LM head cover the added rows.

        The added token rows are parameters of this wrapper, not of the transformers model, so
        that only they train while the base tables stay frozen. Code that runs the transformers
        model by itself (``generate``) sees the whole vocabulary through this block.
        """
        hf = self.hf_model
        table, head = hf.get_input_embeddings(), hf.get_output_embeddings()
        if self.new_embed.shape[0] == 0:
            yield
            return
        self._swapped_tables = (table, head)
        hf.set_input_embeddings(_WithAddedRows(self, table, 'embed'))
        hf.set_output_embeddings(_WithAddedRows(self, head, 'logits'))
        try:
            yield
        finally:
            hf.set_input_embeddings(table)
            hf.set_output_embeddings(head)
            self._swapped_tables = None

    @torch.no_grad()
    def generate(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int,
                 pad_token_id: int, synced_gpus: bool = False,
                 **generation_kwargs) -> Tuple[torch.Tensor, torch.Tensor, Any]:
        """Generate with transformers' ``generate`` from prompt embeddings.

        Greedy unless ``generation_kwargs`` say otherwise (``do_sample``, ``temperature``,
        ``top_p``, ``repetition_penalty``, ``logits_processor``, ``stopping_criteria``...; beam
        search is refused, its hidden states do not follow one sequence). ``synced_gpus`` keeps
        every rank generating until all have finished (sharded weights).

        Args:
            inputs_embeds (Tensor): ``(B, L, H)`` left-padded prompt embeddings.
            attention_mask (Tensor): ``(B, L)``.
            position_ids (Tensor): ``(B, L)``; later positions continue from the last one.
            max_new_tokens (int): Generation budget.
            eos_token_id (int): End of an answer.
            pad_token_id (int): Written after a finished answer.
            synced_gpus (bool): See above. Defaults to False.

        Returns:
            tuple: ``tokens`` ``(B, T)``; ``states`` ``(B, T, H)``, the last-layer hidden state
            from which each token was emitted (the prompt's last state first); and the
            key/value cache, holding every position but the last token's.
        """
        if generation_kwargs.get('num_beams', 1) != 1:
            raise ValueError('beam search is not supported: each hidden state must belong to '
                             'the one sequence that keeps it')
        generation_kwargs.setdefault('do_sample', False)
        with self.full_vocabulary():
            out = self.model.generate(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                position_ids=position_ids, max_new_tokens=max_new_tokens,
                eos_token_id=eos_token_id, pad_token_id=pad_token_id, synced_gpus=synced_gpus,
                output_hidden_states=True, return_dict_in_generate=True, use_cache=True,
                **generation_kwargs)
        # hidden_states: per step, per layer; the last layer is after the final norm.
        steps = out.hidden_states[:out.sequences.shape[1]]
        states = torch.stack([layers[-1][:, -1] for layers in steps], 1)
        return out.sequences, states, out.past_key_values

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values=None, use_cache: bool = False,
                position_ids: Optional[torch.Tensor] = None) -> Dict:
        """Run the decoder stack.

        Returns:
            dict: ``hidden`` (B, L, H) last-layer hidden states (after the final norm),
            ``logits`` (B, L, V) and ``past_key_values`` (when ``use_cache``).
        """
        decoder = self.hf_model.get_decoder()
        cache_key = self._cache_key
        out = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=use_cache,
                      **{cache_key: past_key_values})
        hidden = out.last_hidden_state
        cache = out.get(cache_key) if use_cache else None
        return dict(hidden=hidden, logits=self.logits(hidden),
                    past_key_values=cache if use_cache else None)


class _WithAddedRows(nn.Module):
    """A transformers embedding or LM head extended by :class:`HFCausalLM`'s added token rows."""

    def __init__(self, llm: 'HFCausalLM', base: nn.Module, method: str) -> None:
        super().__init__()
        self.base = base
        self._llm = [llm]  # a list: the wrapper must not become a child module of the LLM
        self._method = method

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self._llm[0], self._method)(x)
