"""PtClassifierEngine: reward scores, class labels and per-step PRM scores on tiny models built from config."""
import json
import math

import pytest
import torch

from swiftops.engines.pt.classifier import PtClassifierEngine
from swiftops.engines.pt.task import detect_task_type
from swiftops.protocol import BadRequestError, InferRequest

CONVERSATION = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]


def build(out_dir, head: str, num_labels: int, extra_tokens=()):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, Qwen2Config

    from swiftops.models.tiny import MODEL_SHAPE, train_tokenizer

    tokenizer = train_tokenizer()
    if extra_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": list(extra_tokens)}, replace_extra_special_tokens=False)
    config = Qwen2Config(vocab_size=len(tokenizer), **MODEL_SHAPE, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    auto = AutoModelForSequenceClassification if head == "seq" else AutoModelForTokenClassification
    torch.manual_seed(0)
    model = auto.from_config(config).eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir, model, tokenizer


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny-reward"), "seq", 1)


def expected_logits(model, tokenizer, messages):
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    with torch.inference_mode():
        return model(input_ids=torch.tensor([tokenizer(text)["input_ids"]])).logits[0]


def test_task_types_are_detected_from_the_config(reward_model, tmp_path):
    assert detect_task_type(str(reward_model[0])) == "reward"
    seq_dir, _, _ = build(tmp_path / "cls", "seq", 3)
    assert detect_task_type(str(seq_dir)) == "seq_cls"
    prm_dir, _, _ = build(tmp_path / "prm", "token", 2)
    assert detect_task_type(str(prm_dir)) == "prm"


def test_tiny_causal_lm_is_causal_lm(tiny_model_dir):
    assert detect_task_type(str(tiny_model_dir)) == "causal_lm"


def test_reward_score_is_the_models_logit(reward_model):
    path, model, tokenizer = reward_model
    with PtClassifierEngine(str(path)) as engine:
        assert engine.task_type == "reward"
        [response] = engine.infer([InferRequest(messages=CONVERSATION)])
        other = engine.infer([InferRequest(messages=[CONVERSATION[0], {"role": "assistant", "content": "5"}])])[0]
    score = float(response.choices[0].message.content)
    assert score == pytest.approx(float(expected_logits(model, tokenizer, CONVERSATION)[0]), abs=1e-4)
    assert float(other.choices[0].message.content) != pytest.approx(score)
    assert response.usage.prompt_tokens > 0 and response.choices[0].finish_reason == "stop"


def test_seq_cls_answers_the_label_index_with_probabilities(tmp_path):
    path, model, tokenizer = build(tmp_path / "cls", "seq", 3)
    with PtClassifierEngine(str(path)) as engine:
        [response] = engine.infer([InferRequest(messages=CONVERSATION)])
    choice = response.choices[0]
    expected = expected_logits(model, tokenizer, CONVERSATION)
    assert choice.message.content == str(int(expected.argmax()))
    top = choice.logprobs.content[0].top_logprobs
    assert [t.token for t in top] == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert sum(math.exp(t.logprob) for t in top) == pytest.approx(1.0, abs=1e-5)


def test_prm_scores_each_step(tmp_path):
    path, model, tokenizer = build(tmp_path / "prm", "token", 2, extra_tokens=("<extra_0>",))
    steps = ["Step 1: 2 + 2 means adding two and two.", "Step 2: that is 4.", "Step 3: so the answer is 4."]
    messages = [CONVERSATION[0], {"role": "assistant", "content": "\n\n".join(steps)}]
    with PtClassifierEngine(str(path), task_type="prm") as engine:
        [response] = engine.infer([InferRequest(messages=messages)])
        with pytest.raises(BadRequestError, match="last assistant message"):
            engine.infer([InferRequest(messages=[CONVERSATION[0]])])
    scores = json.loads(response.choices[0].message.content)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    marked = [CONVERSATION[0], {"role": "assistant", "content": "".join(s + "<extra_0>" for s in steps)}]
    text = tokenizer.apply_chat_template(marked, tokenize=False)
    ids = tokenizer(text)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    marker = tokenizer.convert_tokens_to_ids("<extra_0>")
    expected = logits[[i for i, t in enumerate(ids) if t == marker]].softmax(-1)[:, 1].tolist()
    assert scores == pytest.approx(expected, abs=1e-5)
