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
