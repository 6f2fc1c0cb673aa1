"""`RequestConfig(num_beams=N)`: beam search on the pt backend gives transformers' beam-search answer; the
backends without it refuse with a 400 naming the one that has it."""
from __future__ import annotations

import pytest
import torch

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.protocol import BadRequestError, UnsupportedError
from swiftops.protocol.capabilities import require

MESSAGES = [{"role": "user", "content": "tell me a story about a cat"}]


def transformers_beams(model_dir, num_beams: int, n: int, max_new_tokens: int) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, num_beams=num_beams, num_return_sequences=n, max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    prompt_len = ids["input_ids"].shape[1]
    texts = []
    for row in out[:, prompt_len:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode([t for t in row if t != tokenizer.pad_token_id], skip_special_tokens=True))
    return texts


def test_beam_search_matches_transformers(tiny_model_dir):
    want = transformers_beams(tiny_model_dir, num_beams=4, n=2, max_new_tokens=12)
    with PtEngine(str(tiny_model_dir), max_batch_size=4) as engine:
        [beams] = engine.infer([InferRequest(messages=MESSAGES)], RequestConfig(num_beams=4, n=2, max_tokens=12))
        [greedy] = engine.infer([InferRequest(messages=MESSAGES)], RequestConfig(temperature=0, max_tokens=12))
        assert [c.message.content for c in beams.choices] == want
        assert beams.usage.prompt_tokens == greedy.usage.prompt_tokens
        with pytest.raises(BadRequestError, match="stream false"):
            list(engine.infer([InferRequest(messages=MESSAGES)], RequestConfig(num_beams=2, stream=True))[0])
        with pytest.raises(BadRequestError, match="num_beams >= n"):
            engine.infer([InferRequest(messages=MESSAGES)], RequestConfig(num_beams=2, n=3))


def test_beams_after_an_adapter_request_are_the_base_models(tiny_model_dir, tmp_path, make_lora_adapter):
    """Beam search runs on the base model; the engine loop's last batch (an adapter's) must not leak into it."""
    from swiftops.protocol import AdapterRequest
    adapter = str(make_lora_adapter(tiny_model_dir, tmp_path / "sql", 1))
    beams = RequestConfig(num_beams=3, n=2, max_tokens=10)
    with PtEngine(str(tiny_model_dir), adapters={"sql": adapter}, max_batch_size=4) as engine:
        [before] = engine.infer([InferRequest(messages=MESSAGES)], beams)
        [tuned] = engine.infer([InferRequest(messages=MESSAGES)], RequestConfig(temperature=0, max_tokens=10),
                               adapter_request=AdapterRequest(name="sql"))
        [after] = engine.infer([InferRequest(messages=MESSAGES)], beams)
    assert [c.message.content for c in after.choices] == [c.message.content for c in before.choices]
    assert before.choices[0].message.content != tuned.choices[0].message.content  # the adapter does change text


@pytest.mark.parametrize("backend", ["vllm", "lmdeploy"])
def test_other_backends_refuse_beams_naming_pt(backend):
    with pytest.raises(UnsupportedError, match="--infer_backend pt"):
        require(backend, "beam_search")
