"""LLM backbone: LoRA placement, added token rows, cache consistency, checkpointing."""
import pytest
import torch

from pixellm.models.llms import HFCausalLM

LCFG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
            tie_word_embeddings=False)


def test_lora_trains_only_adapters_and_new_rows():
    llm = HFCausalLM(llm_config=LCFG, lora=dict(r=4, alpha=8, dropout=0.0,
                                                target_modules=['q_proj', 'v_proj']))
    llm.add_token_rows(3)
    names = {n for n, p in llm.named_parameters() if p.requires_grad}
    assert {'new_embed', 'new_head'} <= names
    others = names - {'new_embed', 'new_head'}
    assert others and all('lora_' in n and ('q_proj' in n or 'v_proj' in n) for n in others)
    assert len(others) == 2 * 2 * 2  # layers x (q, v) x (A, B)


def test_no_lora_freezes_everything_but_new_rows():
    llm = HFCausalLM(llm_config=LCFG)
    llm.add_token_rows(2)
    assert {n for n, p in llm.named_parameters() if p.requires_grad} == {'new_embed', 'new_head'}
    with pytest.raises(ValueError, match='unknown LoRA option'):
        HFCausalLM(llm_config=LCFG, lora=dict(rank=4))


def test_added_rows_route_embeddings_and_logits():
    torch.manual_seed(0)
    llm = HFCausalLM(llm_config=LCFG)
    ids = llm.add_token_rows(2)
    assert ids == [64, 65] and llm.vocab_size == 66
    table = llm.hf_model.get_input_embeddings().weight
    torch.testing.assert_close(llm.new_embed[0], table.mean(0))
    with torch.no_grad():
        llm.new_embed.copy_(torch.randn(2, 32))
        llm.new_head.copy_(torch.randn(2, 32))
    emb = llm.embed(torch.tensor([[3, 65, 64]]))
    torch.testing.assert_close(emb[0, 0], table[3])
    torch.testing.assert_close(emb[0, 1], llm.new_embed[1])
    h = torch.randn(1, 2, 32)
    logits = llm.logits(h)
    assert logits.shape == (1, 2, 66)
    torch.testing.assert_close(logits[..., 64:], h @ llm.new_head.t())
    with pytest.raises(ValueError, match='add_token_rows'):
        llm.embed(torch.tensor([[66]]))


def test_added_rows_gradient_sums_every_occurrence_reproducibly():
    # Each added id occurs hundreds of times; its row's gradient is the sum over the occurrences.
    # With advanced indexing (new_embed[ids]) a CPU backward added them with atomic adds from
    # several threads, in an order that changed from one pass to the next.
    torch.manual_seed(0)
    llm = HFCausalLM(llm_config=LCFG)
    llm.add_token_rows(3)
    ids = torch.randint(0, 67, (8, 300))
    upstream = torch.randn(8, 300, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        grads = []
        for _ in range(5):
            llm.new_embed.grad = None
            (llm.embed(ids) * upstream).sum().backward()
            grads.append(llm.new_embed.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
    expected = torch.stack([upstream.double()[ids == 64 + k].sum(0) for k in range(3)])
    torch.testing.assert_close(grads[0].double(), expected, rtol=1e-5, atol=1e-4)


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    llm = HFCausalLM(llm_config=LCFG).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    full = llm(llm.embed(ids))['logits']
    out = llm(llm.embed(ids[:, :3]), use_cache=True)
    step = llm(llm.embed(ids[:, 3:4]), attention_mask=torch.ones(1, 4, dtype=torch.long),
               past_key_values=out['past_key_values'], use_cache=True)
    torch.testing.assert_close(step['logits'][:, -1], full[:, 3], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_gives_same_gradients():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        llm = HFCausalLM(llm_config=LCFG, gradient_checkpointing=ckpt,
                         lora=dict(r=4, alpha=8, dropout=0.0))
        llm.train()
        llm.add_token_rows(1)
        out = llm(llm.embed(torch.tensor([[1, 2, 64, 3]])))
        out['logits'].sum().backward()
        grads.append(llm.new_embed.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_loads_a_llava_v1_style_checkpoint_as_llama(tmp_path):
    """LLaVA v1 folders say model_type="llava"; the LLaMA inside must load all the same."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**LCFG))
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / 'config.json').read_text())
    config.update(model_type='llava', mm_hidden_size=1024, mm_vision_tower='clip')
    (tmp_path / 'config.json').write_text(json.dumps(config))
    llm = HFCausalLM(pretrained=str(tmp_path), llm_config=dict(model_type='llama'))
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(llm.hf_model.state_dict()[name], value)


def test_added_rows_stay_float32_under_a_bf16_llm():
    llm = HFCausalLM(llm_config=LCFG, torch_dtype='bfloat16')
    llm.add_token_rows(2)
    assert llm.new_embed.dtype == torch.float32 and llm.new_head.dtype == torch.float32
    assert llm.embed(torch.tensor([[1, 64]])).dtype == torch.bfloat16


def test_auto_attention_takes_flash_attention_only_where_it_runs(monkeypatch):
    import importlib.util

    from pixellm.models.llms import causal_lm
    real = importlib.util.find_spec
    assert causal_lm.resolve_attn_implementation('eager') == 'eager'
    with pytest.raises(ValueError, match="'sdpa', 'eager', 'flash_attention_2', 'auto'"):
        causal_lm.resolve_attn_implementation('flash')
    for installed, cuda, expected in [(False, False, 'sdpa'), (True, False, 'sdpa'),
                                      (False, True, 'sdpa'), (True, True, 'flash_attention_2')]:
        monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a, inst=installed: (
            object() if inst else None) if name == 'flash_attn' else real(name, *a))
        monkeypatch.setattr(torch.cuda, 'is_available', lambda c=cuda: c)
        assert causal_lm.resolve_attn_implementation('auto') == expected
    monkeypatch.undo()
    llm = HFCausalLM(llm_config=LCFG, attn_implementation='auto')
    assert llm.model.config._attn_implementation == 'sdpa'  # this machine: no CUDA


LORA = dict(r=4, alpha=8, dropout=0.0, target_modules=['q_proj', 'v_proj'])
TABLES = ('embed_tokens.', 'lm_head.')


def test_train_token_tables_trains_whole_float32_tables_of_a_bf16_llm():
    torch.manual_seed(0)
    llm = HFCausalLM(llm_config=LCFG, torch_dtype='bfloat16', lora=LORA, train_token_tables=True)
    llm.add_token_rows(2)
    hf = llm.hf_model
    emb, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    assert emb.shape == head.shape == (64, 32) and emb is not head
    for table in (emb, head):
        assert table.dtype == torch.float32 and table.requires_grad
    # The decoder stays bf16 and frozen; only the LoRA adapters (peft keeps them float32) train.
    trainable = {'new_embed', 'new_head'}
    for name, p in llm.named_parameters():
        if 'lora_' in name or any(t in name for t in TABLES) or name in trainable:
            assert p.requires_grad, name
        else:
            assert p.dtype == torch.bfloat16 and not p.requires_grad, name
    assert sum('lora_' in n for n, _ in llm.named_parameters()) == 2 * 2 * 2
    with torch.no_grad():
        llm.new_head.copy_(torch.randn(2, 32))

    # embed(): the float32 base rows reach the decoder in its dtype, the added rows too.
    ids = torch.tensor([[3, 7, 64, 7, 20, 65, 3, 41]])
    inputs = llm.embed(ids)
    assert inputs.dtype == torch.bfloat16
    base = ids[0] < 64
    assert torch.equal(inputs[0, base], emb.detach()[ids[0, base]].to(torch.bfloat16))
    assert torch.equal(inputs[0, ~base], llm.new_embed.detach()[ids[0, ~base] - 64].bfloat16())

    # logits(): the float32 head runs in the hidden states' dtype, followed by the added rows.
    h = torch.randn(1, 5, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = llm.logits(h)
        expected = h @ torch.cat([head, llm.new_head]).to(torch.bfloat16).t()
    assert logits.dtype == torch.bfloat16 and logits.shape == (1, 5, 66)
    torch.testing.assert_close(logits, expected)

    # One backward through the decoder: the embedding rows of the ids that occurred get exactly
    # the sum of their positions' input gradients, no other row any; every head row a gradient.
    llm.train()
    inputs = llm.embed(ids)
    inputs.retain_grad()
    out = llm(inputs)
    out['hidden'].retain_grad()
    out['logits'].retain_grad()
    labels = torch.tensor([7, 64, 7, 20, 65, 3, 41, 5])
    torch.nn.functional.cross_entropy(out['logits'][0].float(), labels).backward()
    assert emb.grad.dtype == head.grad.dtype == torch.float32
    seen = sorted(set(ids[0, base].tolist()))
    assert seen == [3, 7, 20, 41]
    nonzero_rows = emb.grad.abs().sum(1).nonzero().flatten().tolist()
    assert nonzero_rows == seen
    expected_emb = torch.zeros(64, 32, dtype=torch.float64)
    expected_emb.index_add_(0, ids[0, base], inputs.grad[0, base].double())
    torch.testing.assert_close(emb.grad.double(), expected_emb, rtol=1e-6, atol=1e-9)
    assert bool((head.grad.abs().sum(1) > 0).all())
    # d loss / d head = d loss / d logits^T @ hidden, over the base-vocabulary columns.
    expected_head = out['logits'].grad[0, :, :64].float().t() @ out['hidden'][0].detach().float()
    torch.testing.assert_close(head.grad, expected_head, rtol=2e-2, atol=1e-4)
    assert llm.new_embed.grad.abs().sum() > 0 and llm.new_head.grad.abs().sum() > 0


def test_token_tables_stay_bf16_and_frozen_by_default():
    llm = HFCausalLM(llm_config=LCFG, torch_dtype='bfloat16', lora=LORA)
    hf = llm.hf_model
    for table in (hf.get_input_embeddings().weight, hf.get_output_embeddings().weight):
        assert table.dtype == torch.bfloat16 and not table.requires_grad
    assert llm.embed(torch.tensor([[1, 2]])).dtype == torch.bfloat16


def test_train_token_tables_keeps_tied_tables_one_parameter():
    torch.manual_seed(0)
    llm = HFCausalLM(llm_config=dict(LCFG, tie_word_embeddings=True), torch_dtype='bfloat16',
                     lora=LORA, train_token_tables=True)
    hf = llm.hf_model
    emb, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    assert head is emb
    assert emb.dtype == torch.float32 and emb.requires_grad
    # One trainable table, counted once; both ends of the model read it.
    assert sum(any(t in n for t in TABLES) for n, p in llm.named_parameters()
               if p.requires_grad) == 1
    h = torch.randn(1, 3, 32, dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(llm.logits(h), h @ emb.to(torch.bfloat16).t())


def test_adamw_step_moves_only_the_base_rows_that_occurred():
    torch.manual_seed(0)
    llm = HFCausalLM(llm_config=LCFG, torch_dtype='bfloat16', lora=LORA, train_token_tables=True)
    llm.add_token_rows(2)
    llm.train()
    hf = llm.hf_model
    emb, head = hf.get_input_embeddings().weight, hf.get_output_embeddings().weight
    before_emb, before_head = emb.detach().clone(), head.detach().clone()
    ids = torch.tensor([[3, 7, 64, 7, 20, 65, 3, 41]])
    labels = torch.tensor([7, 64, 7, 20, 65, 3, 41, 5])
    lr = 1e-3
    # The recipes' optimizer (configs/_base_/schedules/pixellm_10e_5k.py): no weight decay.
    opt = torch.optim.AdamW([p for p in llm.parameters() if p.requires_grad], lr=lr,
                            betas=(0.9, 0.95), weight_decay=0.0)
    logits = llm(llm.embed(ids))['logits']
    torch.nn.functional.cross_entropy(logits[0].float(), labels).backward()
    grad_emb, grad_head = emb.grad.clone(), head.grad.clone()
    opt.step()
    occurred = torch.zeros(64, dtype=torch.bool)
    occurred[[3, 7, 20, 41]] = True
    assert torch.equal(emb.detach()[~occurred], before_emb[~occurred])
    assert bool((emb.detach()[occurred] != before_emb[occurred]).any(1).all())
    assert bool((head.detach() != before_head).any(1).all())
    # Adam's first step moves each weight by lr * g / (|g| + eps), in float32 precision.
    for new, old, g in ((emb.detach()[occurred], before_emb[occurred], grad_emb[occurred]),
                        (head.detach(), before_head, grad_head)):
        g = g.double()
        expected = old.double() - lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(new.double(), expected, rtol=0, atol=1e-7)


def test_a_registered_architecture_builds_and_declares_its_blocks():
    from pixellm.models.llms import (HFCausalLM, causal_lm, register_llm_architecture,
                                     registered_llm_architectures)
    before = registered_llm_architectures()
    try:
        register_llm_architecture('qwen3', 'Qwen3Config', 'Qwen3ForCausalLM')
        register_llm_architecture('qwen3', 'Qwen3Config', 'Qwen3ForCausalLM')  # same: no-op
        cfg = dict(model_type='qwen3', vocab_size=64, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                   head_dim=16, max_position_embeddings=64)
        llm = HFCausalLM(llm_config=dict(cfg))
        assert type(llm.model).__name__ == 'Qwen3ForCausalLM' and llm.hidden_size == 32
        assert HFCausalLM.fsdp_block_classes(dict(llm_config=cfg)) == ('Qwen3DecoderLayer', )
        with pytest.raises(ValueError, match="'qwen3' already builds"):
            register_llm_architecture('qwen3', 'LlamaConfig', 'LlamaForCausalLM')
        with pytest.raises(ValueError, match='has no'):
            register_llm_architecture('nope', 'NoSuchConfig', 'NoSuchForCausalLM')
    finally:
        causal_lm._ARCHITECTURES.clear()
        causal_lm._ARCHITECTURES.update(before)
    with pytest.raises(ValueError, match="unknown llm_config model_type 'qwen3'"):
        HFCausalLM(llm_config=dict(cfg))


def test_an_architecture_without_block_classes_is_refused_for_fsdp(monkeypatch):
    import transformers
    monkeypatch.setattr(transformers.LlamaForCausalLM, '_no_split_modules', None)
    with pytest.raises(ValueError, match='LlamaForCausalLM names no decoder block class'):
        HFCausalLM.fsdp_block_classes(dict(llm_config=dict(model_type='llama')))
