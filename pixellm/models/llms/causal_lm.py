"""A transformers causal LM (LLaMA family) as PixelLM's language backbone, with LoRA and new token rows."""
import inspect
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.model import BaseModule
from torch import nn

from pixellm.registry import MODELS

_ARCHITECTURES = {
    'llama': ('LlamaConfig', 'LlamaForCausalLM'),
    'mistral': ('MistralConfig', 'MistralForCausalLM'),
    'qwen2': ('Qwen2Config', 'Qwen2ForCausalLM'),
}


def _resolve_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == 'auto':
        return 'auto'
    return getattr(torch, dtype)


@MODELS.register_module()
class HFCausalLM(BaseModule):
    """Language backbone over a Hugging Face causal LM, optionally adapted with LoRA.

    All version-sensitive transformers/peft calls of the toolbox live in this class.

    The base vocabulary table and LM head stay frozen; tokens added to the tokenizer after the
    checkpoint (``<im_start>``/``<im_end>``, the codebook tokens...) get their own trainable rows
    (:meth:`add_token_rows`), so training touches a few vectors instead of the 32k-row tables the
    official code unfreezes whole.

    Args:
        pretrained (str, optional): Hub name or local path of a checkpoint (e.g. a LLaVA v1
            checkpoint), loaded with the architecture ``llm_config['model_type']`` names. When
            None the model is built from ``llm_config`` with random weights.
        llm_config (dict, optional): Config kwargs; ``model_type`` picks the architecture
            (``'llama'`` by default).
        torch_dtype (str, optional): Weight dtype, e.g. ``'bfloat16'``.
        attn_implementation (str): ``'sdpa'`` (default), ``'eager'`` or ``'flash_attention_2'``.
        gradient_checkpointing (bool): Recompute decoder layers in backward. Defaults to False.
        lora (dict, optional): ``dict(r=8, alpha=16, dropout=0.05, target_modules=['q_proj',
            'v_proj'])`` wraps the model with peft LoRA (PixelLM's settings). None trains no
            LLM weight except the new token rows.
        freeze (bool): Freeze the base weights. Defaults to True; False with ``lora=None`` is
            full fine-tuning.
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
                 init_cfg: Optional[Dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        import transformers
        dtype = _resolve_dtype(torch_dtype)
        cfg = dict(llm_config or {})
        model_type = cfg.pop('model_type', 'llama')
        if model_type not in _ARCHITECTURES:
            raise ValueError(f'unknown llm_config model_type {model_type!r}; known: '
                             f'{sorted(_ARCHITECTURES)}')
        config_cls, model_cls = (getattr(transformers, n) for n in _ARCHITECTURES[model_type])
        if pretrained is not None:
            # The architecture class comes from llm_config, not from the checkpoint's config:
            # LLaVA v1 checkpoints say model_type="llava", which transformers maps to its own
            # (non causal-LM) LLaVA class; their language model is a plain LLaMA, and the extra
            # mm_projector / vision_tower weights are ignored here.
            config = config_cls.from_pretrained(pretrained)
            model = model_cls.from_pretrained(pretrained, config=config, dtype=dtype,
                                              attn_implementation=attn_implementation)
        elif llm_config is not None:
            config = config_cls(**cfg)
            config._attn_implementation = attn_implementation
            model = model_cls(config)
            if isinstance(dtype, torch.dtype):
                model.to(dtype)
        else:
            raise ValueError('HFCausalLM needs `pretrained` (checkpoint name or path) or '
                             '`llm_config` (config kwargs for a randomly initialised model)')
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
        # transformers >= 5.2x renamed ``past_key_values`` to ``cache``; read the name once here
        # rather than inspecting the signature on every decoding step.
        decoder_params = inspect.signature(self.hf_model.get_decoder().forward).parameters
        self._cache_key = 'cache' if 'cache' in decoder_params else 'past_key_values'
        # The added rows are the only trained embeddings; they stay float32 whatever the LLM's
        # dtype, because mmengine's optimizer keeps no fp32 master copy of bf16 parameters.
        self.new_embed = nn.Parameter(torch.empty(0, self.hidden_size))
        self.new_head = nn.Parameter(torch.empty(0, self.hidden_size))

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

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed token ids, routing ids past the base vocabulary to the trainable rows."""
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.vocab_size):
            raise ValueError(f'token ids must lie in [0, {self.vocab_size}), got '
                             f'[{int(input_ids.min())}, {int(input_ids.max())}]; was the '
                             'tokenizer extended without add_token_rows()?')
        table = self.hf_model.get_input_embeddings()
        base = table(input_ids.clamp(max=self.base_vocab_size - 1))
        is_new = input_ids >= self.base_vocab_size
        if self.new_embed.shape[0] == 0:
            return base
        new = self.new_embed[(input_ids - self.base_vocab_size).clamp(min=0)]
        return torch.where(is_new[..., None], new.to(base.dtype), base)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits over the base vocabulary followed by the added rows."""
        base = self.hf_model.get_output_embeddings()(hidden)
        if self.new_head.shape[0] == 0:
            return base
        return torch.cat([base, hidden @ self.new_head.to(hidden.dtype).t()], dim=-1)

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
