"""pixellm.apis: the prediction of tools/test.py, multi-turn prompts, saved files, bad input."""
import importlib.util
import json
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.apis import InferenceInputError, build_conversation, inference, init_model
from pixellm.models.export import CheckpointMismatchError
from pixellm.registry import DATASETS
from pixellm.utils import load_config
from pixellm.utils.constants import IGNORE_INDEX
from pixellm.visualization import render_prediction

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope='module')
def model(trained_tiny):
    return init_model(trained_tiny['config'], trained_tiny['checkpoint'])


def val_questions(data_root):
    records = json.load(open(osp.join(data_root, 'muse_val.json')))
    for record in records:
        path = osp.join(data_root, 'images', record['file_name'])
        for index, question in enumerate(record['questions']):
            yield path, index, question


def test_inference_gives_the_prediction_of_tools_test(trained_tiny, model, tmp_path):
    show = tmp_path / 'show'
    proc = subprocess.run(
        [sys.executable, 'tools/test.py', trained_tiny['config'], trained_tiny['checkpoint'],
         '--work-dir', str(tmp_path / 'work'), '--show-dir', str(show), '--cfg-options',
         *trained_tiny['cfg_options']], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compared = targets = 0
    for path, index, question in val_questions(trained_tiny['data_root']):
        # Asked as a user asks it: inference puts it in the test pipeline's wording.
        result = inference(model, path, question)
        assert result.question == question
        stem = osp.splitext(osp.basename(path))[0]
        written = np.asarray(Image.open(show / f'{stem}_q{index}.png').convert('RGB'))
        # Same renderer, same question text: equal pixels mean equal masks and answer text.
        ours = np.asarray(render_prediction(Image.open(path), result.masks, question,
                                            result.raw_text, model.codebook.tokens))
        assert ours.shape == written.shape, (path, index)
        assert np.array_equal(ours, written), (path, index, result.text)
        assert result.text.count('[') == result.num_targets
        compared += 1
        targets += result.num_targets
    assert compared == 15
    # The web demo's examples (each record's first question, asked through inference) are
    # among the questions compared.
    spec = importlib.util.spec_from_file_location('web_demo_app', osp.join(REPO, 'demo', 'app.py'))
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    examples = app.muse_examples(osp.join(trained_tiny['data_root'], 'muse_val.json'), 100)
    assert examples and set(examples) <= {
        (path, question) for path, _, question in val_questions(trained_tiny['data_root'])}
    assert targets > 0  # the trained model does write targets, so masks were compared


def test_image_placeholder_only_once_in_the_first_question():
    assert build_conversation('<image>\nWhat?')[0]['content'] == '<image>\nWhat?'
    with pytest.raises(InferenceInputError, match='once, in the first question'):
        build_conversation('<image> and <image>?')
    with pytest.raises(InferenceInputError, match='once, in the first question'):
        build_conversation('And <image>?', history=[('What?', 'It.')])


def test_multi_turn_prompt_holds_the_history(model):
    first = build_conversation('What is red?')
    assert first == [dict(role='user', content='<image>\nWhat is red?')]
    turns = build_conversation('And the blue one?', history=[('What is red?', 'It is x.')])
    assert [t['role'] for t in turns] == ['user', 'assistant', 'user']
    assert turns[0]['content'].startswith('<image>\n') and '<image>' not in turns[2]['content']
    ids = model.text_processor.encode_prompt(turns)
    text = model.tokenizer.decode(ids[ids >= 0])
    assert text.index('What is red?') < text.index('It is x.') < text.index('And the blue one?')


def test_saved_masks_and_rle_equal_the_prediction(trained_tiny, model, tmp_path):
    results = [inference(model, path, q) for path, _, q in val_questions(trained_tiny['data_root'])]
    result = max(results, key=lambda r: r.num_targets)
    assert result.num_targets >= 1
    files = result.save(str(tmp_path), stem='x', save_rle=True)
    assert len(files['masks']) == result.num_targets
    height, width = result.image.shape[:2]
    for k, path in enumerate(files['masks']):
        png = np.asarray(Image.open(path))
        assert np.array_equal(png == 255, result.masks[k])
    dump = json.load(open(files['rle']))
    assert [t['index'] for t in dump['targets']] == list(range(1, result.num_targets + 1))
    for k, target in enumerate(dump['targets']):
        rle = dict(target['segmentation'], counts=target['segmentation']['counts'].encode())
        assert np.array_equal(mask_utils.decode(rle).astype(bool), result.masks[k])
    overlay = Image.open(files['overlay'])
    assert overlay.width == width and overlay.height > height
    # A later answer under the same stem with fewer targets leaves no stale mask file.
    empty = inference(model, np.zeros((32, 32, 3), np.uint8), 'Is anything here?')
    empty.masks = empty.masks[:0]
    empty.labels = []
    files = empty.save(str(tmp_path), stem='x', save_rle=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['x_overlay.png']


def test_array_and_file_inputs_agree(trained_tiny, model):
    path, _, question = next(val_questions(trained_tiny['data_root']))
    from_file = inference(model, path, question)
    from_array = inference(model, np.asarray(Image.open(path).convert('RGB')), question)
    assert from_file.raw_text == from_array.raw_text
    assert np.array_equal(from_file.masks, from_array.masks)


# Measured on the 250-iteration fixture model, over the 15 val answers: worst teacher-forced
# logit error 0.084 (bf16) and 0.026 (fp16), logits spread (std) about 1.6; two fixture trainings
# of other configs gave 0.066 and 0.013. The bounds leave about 3x room; weights perturbed by
# 0.02 give errors of 6.7 and more. Greedy decoding turns any error into another word where
# fp32's top two logits are closer than that (margins down to 0.003 were measured), so whole
# answers are compared only where they agree.
HALF_LOGIT_TOLERANCE = {'bf16': 0.25, 'fp16': 0.08}


def _iou(a, b) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0  # two empty masks agree


def _teacher_forced(model, dataset, index):
    data = model.data_preprocessor(pseudo_collate([dataset[index]]), False)
    data['inputs'] = data['inputs'].to(next(model.parameters()).dtype)
    return model._teacher_forced(data['inputs'], data['data_samples'])


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_half_precision_computes_the_fp32_answers(trained_tiny, model, precision):
    half = init_model(trained_tiny['config'], trained_tiny['checkpoint'], precision=precision)
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[precision]
    assert next(half.llm.parameters()).dtype == dtype
    tolerance = HALF_LOGIT_TOLERANCE[precision]
    cfg = load_config(trained_tiny['config'])
    dataset = DATASETS.build(dict(cfg.test_dataloader.dataset,
                                  data_root=trained_tiny['data_root']))
    # The ground-truth answers, teacher-forced through both: the same logits up to rounding at
    # every position that predicts an answer token (logits at t predict the label at t + 1), and
    # the same masks (smallest IoU measured: 0.916 and 0.985 in two fixture trainings).
    for index in range(len(dataset)):
        ref, ours = _teacher_forced(model, dataset, index), _teacher_forced(half, dataset, index)
        assert ours['logits'].dtype == dtype
        predicts_answer = ref['labels'][0][1:] != IGNORE_INDEX
        ref_logits = ref['logits'][0][:-1][predicts_answer]
        our_logits = ours['logits'][0][:-1][predicts_answer].float()
        assert len(ref_logits) > 0
        error = (ref_logits - our_logits).abs().max().item()
        assert error < tolerance, (index, error)
        assert len(ref['mask_logits'][0]) > 0
        for a, b in zip(ref['mask_logits'][0] > 0, ours['mask_logits'][0] > 0):
            assert _iou(a, b) > 0.8, (index, _iou(a, b))
    # End to end (greedy decoding): where the answer text agrees, so do the masks.
    same = 0
    for path, _, question in val_questions(trained_tiny['data_root']):
        full, result = inference(model, path, question), inference(half, path, question)
        assert result.text.count('[') == result.num_targets == len(result.masks)
        if result.text != full.text or not full.num_targets:
            continue
        same += 1
        for ours, ref in zip(result.masks, full.masks):
            assert _iou(ours, ref) > 0.8, (path, question, _iou(ours, ref))
    assert same > 0  # measured: 13 (bf16) and 15 (fp16) of the 15 answers equal fp32's


def test_answer_cut_by_the_budget_is_reported(trained_tiny, model):
    from conftest import load_tool
    answer_lines = load_tool('chat').answer_lines
    for path, _, question in val_questions(trained_tiny['data_root']):
        whole = inference(model, path, question)
        if whole.num_targets and not whole.truncated:
            break
    assert not any('generation budget' in line for line in answer_lines(whole))
    cut = inference(model, path, question, max_new_tokens=2)
    assert cut.truncated and cut.num_targets == 0  # 2 tokens cannot hold a codebook group
    assert whole.raw_text.startswith(cut.raw_text)  # greedy: the cut answer is its beginning
    assert any('generation budget' in line for line in answer_lines(cut))


def test_bad_inputs_raise_one_clear_error(model, tmp_path):
    not_image = tmp_path / 'notes.png'
    not_image.write_text('hello')
    with pytest.raises(InferenceInputError, match='does not exist') as err:
        inference(model, str(tmp_path / 'missing.png'), 'What is it?')
    assert err.value.field == 'image'
    with pytest.raises(InferenceInputError, match='is not an image'):
        inference(model, str(not_image), 'What is it?')
    with pytest.raises(InferenceInputError, match='question is empty') as err:
        inference(model, np.zeros((8, 8, 3), np.uint8), '   ')
    assert err.value.field == 'question'
    with pytest.raises(InferenceInputError, match=r'\(H, W, 3\)'):
        inference(model, np.zeros((8, 8, 5), np.uint8), 'What is it?')


def test_checkpoint_of_another_model_is_refused_with_its_keys(trained_tiny):
    with pytest.raises(CheckpointMismatchError, match='aux_heads'):
        init_model(trained_tiny['config'], trained_tiny['checkpoint'],
                   cfg_options={'model.aux_heads': []})
    with pytest.raises(FileNotFoundError, match='export_hf.py'):
        init_model(trained_tiny['config'], 'nowhere.pth')


def test_4bit_and_8bit_loading_need_an_exported_folder(trained_tiny):
    with pytest.raises(ValueError, match='export_hf.py'):
        init_model(trained_tiny['config'], trained_tiny['checkpoint'], quantization='8bit')
    from pixellm.models.llms.causal_lm import bitsandbytes_load_kwargs
    assert bitsandbytes_load_kwargs(None, None, None) == {}
    with pytest.raises(ValueError, match="'8bit', '4bit'"):
        bitsandbytes_load_kwargs('3bit', 'some/llm', None)
    with pytest.raises(ValueError, match='random weights'):
        bitsandbytes_load_kwargs('4bit', None, None)


def test_questions_are_asked_in_the_test_pipelines_wording():
    from pixellm.apis.inference import _pipeline_settings
    from pixellm.datasets.transforms.conversation import LONG_QUESTION_TEMPLATES
    from pixellm.datasets.transforms.refer_conversation import TEST_LONG_QUESTION
    muse = _pipeline_settings(load_config(osp.join(REPO, 'configs', 'pixellm',
                                                   'pixellm_tiny_muse.py')))
    assert muse['user_prompt']('Where is it?') == LONG_QUESTION_TEMPLATES[0].format(
        sent='Where is it?')
    reason = _pipeline_settings(load_config(osp.join(REPO, 'configs', 'pixellm',
                                                     'pixellm_7b_eval_reasonseg.py')))
    assert reason['user_prompt']('Why?') == ' ' + TEST_LONG_QUESTION.format(sent='Why?')
    turns = build_conversation('And this?', history=[('What?', 'It.')],
                               user_prompt=muse['user_prompt'])
    assert turns[0]['content'] == '<image>\n' + muse['user_prompt']('What?')
    assert turns[2]['content'] == muse['user_prompt']('And this?')
    # A question that places the image itself is used as written.
    assert build_conversation('<image>\nWhat?', user_prompt=muse['user_prompt'])[0][
        'content'] == '<image>\nWhat?'
