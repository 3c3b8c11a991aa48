"""PixelLM assembled from configs: loss terms, trainable set, predict, swaps and config errors."""
import pytest
import torch
from conftest import build_tiny, make_batch, make_sample, tiny_model_cfg

from pixellm.models.losses import TargetRefinementLoss
from pixellm.registry import MODELS


def test_loss_returns_separate_terms_and_grads_reach_exactly_trainable():
    model = build_tiny()
    model.train()
    data = make_batch(model, targets=(2, 0, 1))
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_ce', 'loss_mask_bce', 'loss_mask_dice'}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    # Trainable: LoRA, new token rows, projectors, codebook side, decoder; the rest is frozen.
    prefixes = ('llm.new_embed', 'llm.new_head', 'projector.', 'mask_projector.',
                'pixel_decoder.')
    for name in trainable:
        assert name.startswith(prefixes) or 'lora_' in name, name
    assert any('lora_' in n for n in trainable)
    assert not any(p.requires_grad for p in model.vision_encoder.parameters())
    base = model.llm.hf_model.get_input_embeddings().weight
    assert not base.requires_grad


def test_decoder_receives_projected_features_and_codebook_states():
    model = build_tiny()
    data = make_batch(model, targets=(3,))
    out = model(**data, mode='tensor')
    sample = data['data_samples'][0]
    assert out['mask_logits'][0].shape == (3, *sample.metainfo['ori_shape'])
    assert out['low_res'][0].shape[0] == 3
    assert out['logits'].shape[-1] == model.llm.vocab_size == len(model.tokenizer)


def _script_generation(model, answer_ids):
    """Make the LLM emit ``answer_ids`` then EOS, whatever the input."""
    real_logits = model.llm.logits
    step = {'i': 0}

    def scripted(hidden):
        logits = real_logits(hidden)
        forced = torch.full_like(logits[:, -1], -1e4)
        index = min(step['i'], len(answer_ids))
        token = answer_ids[index] if index < len(answer_ids) else model.eos_token_id
        forced[:, token] = 1e4
        step['i'] += 1
        return torch.cat([logits[:, :-1], forced[:, None]], dim=1)

    model.llm.logits = scripted


@pytest.mark.parametrize('num_targets', [0, 1, 3])
def test_predict_returns_one_mask_per_generated_target(num_targets):
    model = build_tiny().eval()
    text = 'They are ' + ' and '.join([model.codebook.target_text] * num_targets) + '.'
    # A broken group (first two tokens only) must not become a mask.
    text += ' ' + ' '.join(model.codebook.tokens[:2])
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    _script_generation(model, ids)
    image, sample = make_sample(model, 1, ori=(37, 41))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    out = model(**data, mode='predict')[0]
    assert out.pred_instances.masks.shape == (num_targets, 37, 41)
    assert out.pred_instances.masks.dtype == torch.bool
    assert out.pred_instances.scores.shape == (num_targets,)
    assert out.pred_text.startswith('They are')
    assert '</s>' not in out.pred_text


def test_answer_cut_by_the_budget_is_marked_and_warned_once(monkeypatch):
    from pixellm.models.segmentors import pixellm as pixellm_module
    model = build_tiny().eval()
    ids = model.tokenizer('They are ' + ' and '.join([model.codebook.target_text] * 2) + '.',
                          add_special_tokens=False).input_ids
    warnings = []
    monkeypatch.setattr(pixellm_module, 'print_log', lambda msg, **kw: warnings.append(msg))

    def predict(budget):
        _script_generation(model, ids)
        image, sample = make_sample(model, 1, ori=(37, 41))
        data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
        return model.predict(data['inputs'], data['data_samples'], max_new_tokens=budget)[0]

    whole = predict(len(ids) + 1)  # room for the answer and its EOS
    assert not whole.pred_truncated and whole.pred_instances.masks.shape[0] == 2
    assert warnings == []
    # Cut inside the second target's codebook tokens: one mask, marked, warned.
    cut = predict(len(ids) - 3)
    assert cut.pred_truncated and cut.pred_instances.masks.shape[0] == 1
    assert len(warnings) == 1 and f'({len(ids) - 3} new tokens)' in warnings[0]
    assert 'model.max_new_tokens' in warnings[0]
    predict(len(ids) - 3)
    assert len(warnings) == 1  # once per model


def test_generation_matches_teacher_forcing_for_batched_prompts():
    """Greedy decoding with the cache picks the argmax of a full forward at every step."""
    model = build_tiny().eval()
    data = make_batch(model, targets=(1, 2))
    gen, states, aligned, _, _ = model.generate(data['inputs'], data['data_samples'],
                                                max_new_tokens=4)
    assert gen.shape[0] == 2 and states.shape[:2] == aligned.shape
    for i, sample in enumerate(data['data_samples']):
        prompt = sample.prompt_ids
        for t in range(gen.shape[1]):
            ids = torch.cat([prompt, gen[i, :t]])
            sample.input_ids = ids
            single = model.data_preprocessor(
                dict(inputs=[torch.zeros(3, 1, 1, dtype=torch.uint8)], data_samples=[sample]),
                False)
            llm_tokens, mask, _ = model.encode_images(data['inputs'][i:i + 1],
                                                      [sample.metainfo['img_shape']])
            emb, _, m, _ = model._batch_sequences([ids], llm_tokens, mask)
            logits = model.llm(emb, attention_mask=m)['logits']
            assert int(logits[0, -1].argmax()) == int(gen[i, t])
            del single


@pytest.mark.parametrize('hidden_offset', [-1, 0])
def test_generated_states_are_the_teacher_forced_ones(hidden_offset):
    """transformers' generate with the model's positions gives the states a full forward gives."""
    cfg = tiny_model_cfg()
    cfg['text_processor'] = dict(cfg['text_processor'], codebook=dict(
        cfg['text_processor']['codebook'], hidden_offset=hidden_offset))
    torch.manual_seed(0)
    model = MODELS.build(cfg).eval()
    data = make_batch(model, targets=(1, 2))
    gen, states, aligned, _, _ = model.generate(data['inputs'], data['data_samples'],
                                                max_new_tokens=3)
    assert states.shape[:2] == aligned.shape == (2, gen.shape[1] + 1)
    for i, sample in enumerate(data['data_samples']):
        llm_tokens, mask, _ = model.encode_images(data['inputs'][i:i + 1],
                                                  [sample.metainfo['img_shape']])
        for t in range(gen.shape[1] + 1):
            if t == gen.shape[1] and hidden_offset == -1:
                assert not states[i, t].any()  # never read with the official offset
                continue
            ids = torch.cat([sample.prompt_ids, gen[i, :t]])
            emb, _, m, _ = model._batch_sequences([ids], llm_tokens, mask)
            hidden = model.llm(emb, attention_mask=m, position_ids=model._position_ids(m))
            torch.testing.assert_close(states[i, t], hidden['hidden'][0, -1], atol=1e-4,
                                       rtol=1e-4)


def test_generation_options_reach_transformers_generate():
    model = build_tiny(generation_cfg=dict(do_sample=True, temperature=50.0)).eval()
    data = make_batch(model, targets=(1, ))
    draws = set()
    for seed in range(3):
        torch.manual_seed(seed)
        gen = model.generate(data['inputs'], data['data_samples'], max_new_tokens=6)[0]
        draws.add(tuple(gen[0].tolist()))
    assert len(draws) > 1  # sampling at a high temperature; greedy would repeat itself
    greedy = build_tiny().eval()
    once = greedy.generate(data['inputs'], data['data_samples'], max_new_tokens=6)[0]
    again = greedy.generate(data['inputs'], data['data_samples'], max_new_tokens=6)[0]
    assert torch.equal(once, again)
    # Inside full_vocabulary transformers' own head covers the added rows; outside, its own.
    hf = greedy.llm.hf_model
    head = hf.get_output_embeddings()
    hidden = torch.randn(1, 2, greedy.llm.hidden_size)
    with greedy.llm.full_vocabulary():
        torch.testing.assert_close(hf.get_output_embeddings()(hidden), greedy.llm.logits(hidden))
        assert hf.get_output_embeddings()(hidden).shape[-1] == len(greedy.tokenizer)
    assert hf.get_output_embeddings() is head
    with pytest.raises(ValueError, match='beam search is not supported'):
        build_tiny(generation_cfg=dict(num_beams=2)).generate(
            data['inputs'], data['data_samples'], max_new_tokens=2)


def test_config_swaps_reach_the_built_model():
    swapped = build_tiny(loss_mask=dict(type='TargetRefinementLoss', alpha=2.0))
    assert isinstance(swapped.loss_mask, TargetRefinementLoss)
    data = make_batch(swapped, targets=(2,))
    assert 'loss_mask_refine' in swapped(**data, mode='loss')
    cfg = tiny_model_cfg()
    cfg['projector'] = dict(type='MLPProjector', num_layers=1)
    cfg['llm'] = dict(cfg['llm'], lora=None)
    cfg['text_processor'] = dict(cfg['text_processor'], codebook=dict(
        type='SegCodebook', num_scales=1, tokens_per_scale=2))
    cfg['vision_encoder'] = dict(cfg['vision_encoder'], select_layers=(-2,))
    model = MODELS.build(cfg)
    assert len(model.projector.layers) == 1
    assert not any('lora_' in n for n, _ in model.named_parameters())
    assert model.codebook.tokens == ['[SEG0]', '[SEG1]']
    assert model.pixel_decoder.num_scales == 1 and model.pixel_decoder.tokens_per_scale == 2
    data = make_batch(model, targets=(1,))
    assert set(model(**data, mode='loss')) == {'loss_ce', 'loss_mask_bce', 'loss_mask_dice'}


def test_shared_projector_when_not_separate():
    model = build_tiny(separate_mm_projector=False, mask_projector=None)
    assert model.mask_projector is None
    assert model.pixel_decoder.feat_channels == model.llm.hidden_size


def test_unknown_type_names_registry_scope_and_close_names():
    cfg = tiny_model_cfg()
    cfg['pixel_decoder'] = dict(type='PixelDecodr')
    with pytest.raises(KeyError) as err:
        MODELS.build(cfg)
    message = str(err.value)
    assert 'PixelDecodr' in message and 'model' in message and 'pixellm' in message
    assert 'PixelDecoder' in message


def test_missing_component_error_says_what_to_add():
    cfg = tiny_model_cfg()
    del cfg['text_processor']
    with pytest.raises(ValueError, match=r"missing \['text_processor'\]"):
        MODELS.build(cfg)
    with pytest.raises(ValueError, match='mask_projector'):
        build_tiny(mask_projector=None)


def test_codebook_encoder_mismatch_error_names_the_text_processor():
    cfg = tiny_model_cfg()
    cfg['vision_encoder'] = dict(cfg['vision_encoder'], select_layers=(-2, ))
    with pytest.raises(ValueError, match=r'text_processor.codebook has 2 scale\(s\) but the '
                       r'vision encoder returns 1'):
        MODELS.build(cfg)


def test_codebook_decoder_mismatch_error():
    cfg = tiny_model_cfg()
    cfg['pixel_decoder'] = dict(cfg['pixel_decoder'], tokens_per_scale=2)
    with pytest.raises(ValueError, match='codebook has 2 scale.*3 token.*expects 2 x 2'):
        MODELS.build(cfg)


def test_more_targets_than_masks_error():
    model = build_tiny()
    image, sample = make_sample(model, 2)
    from mmengine.structures import InstanceData
    sample.gt_instances = InstanceData(masks=sample.gt_instances.masks[:1])
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), True)
    with pytest.raises(ValueError, match='writes 2 target.*1 mask'):
        model(**data, mode='loss')


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_tiny()
    model.train()
    data = make_batch(model, targets=(2, 1))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=3e-3)
    first = None
    for _ in range(25):
        losses = model(**data, mode='loss')
        total = sum(losses.values())
        first = first if first is not None else {k: float(v) for k, v in losses.items()}
        optim.zero_grad()
        total.backward()
        optim.step()
    last = {k: float(v) for k, v in model(**data, mode='loss').items()}
    assert last['loss_ce'] < 0.7 * first['loss_ce']
    assert last['loss_mask_bce'] < first['loss_mask_bce']


def _decoder_calls(model, data):
    """Names of the pixel decoder's submodules whose forward ran in one training loss."""
    called = set()
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: called.add(name))
             for name, m in model.pixel_decoder.named_modules() if name]
    try:
        losses = model(**data, mode='loss')
    finally:
        for h in hooks:
            h.remove()
    return called, losses


@pytest.mark.parametrize('in_step', [False, True])
def test_batch_without_targets_keeps_every_decoder_weight_in_the_graph(in_step):
    """A rank whose batch names no target must still reach every decoder weight in backward
    (DDP expects a gradient for each; ZeRO-3/FSDP gather weights in backward collectively), and
    in step with other ranks (sharded weights) it must also run the same decoder layers as a
    rank with targets."""
    model = build_tiny()
    model._ranks_in_step = lambda: in_step
    with_targets, _ = _decoder_calls(model, make_batch(model, targets=(2, 1)))
    called, losses = _decoder_calls(model, make_batch(model, targets=(0, 0)))
    sum(losses.values()).backward()
    for name, p in model.pixel_decoder.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
            assert torch.count_nonzero(p.grad) == 0, name  # no target, no signal
    if in_step:
        assert called == with_targets
    else:
        assert not called  # outside sharded runs the decoder's layers are skipped
