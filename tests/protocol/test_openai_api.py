"""OpenAI wire requests -> InferRequest / RequestConfig."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from swiftops.protocol.openai_api import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


def test_chat_request_conversion():
    request = ChatCompletionRequest(
        model="m", messages=[{"role": "developer", "content": "be short"},
                             {"role": "user", "content": [{"type": "text", "text": "what is this"},
                                                          {"type": "image_url", "image_url": {"url": "http://x/a.png"}},
                                                          {"type": "image", "image": "/tmp/b.png"}]}],
        max_tokens=5, max_completion_tokens=7, stop="END", top_k=-1, repetition_penalty=1.1, seed=3, n=2,
        logprobs=True, top_logprobs=4, stream=True, stream_options={"include_usage": True},
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}], tool_choice="auto")
    infer = request.to_infer_request()
    assert infer.messages[0] == {"role": "system", "content": "be short"}
    assert infer.messages[1]["content"][1] == {"type": "image_url", "image_url": {"url": "http://x/a.png"}}
    assert infer.messages[1]["content"][2] == {"type": "image", "image": "/tmp/b.png"}
    assert infer.tools and infer.tool_choice == "auto"
    config = request.to_request_config()
    assert config.max_tokens == 7  # max_completion_tokens wins
    assert config.stop == ["END"] and config.top_k is None and config.repetition_penalty == 1.1
    assert (config.seed, config.n, config.logprobs, config.top_logprobs, config.stream) == (3, 2, True, 4, True)
    assert request.include_usage


@pytest.mark.parametrize("fields", [
    {"top_logprobs": 2},  # needs logprobs
    {"stream_options": {"include_usage": True}},  # needs stream
    {"logit_bias": {"1": 101}},  # OpenAI's range is -100..100
    {"logit_bias": {"x": 5}},  # keys are token ids
    {"response_format": {"type": "xml"}},
    {"stop": ["x"] * 17},
    {"temperature": float("nan")},
    {"unknown": 1},
])
def test_chat_request_rejects(fields):
    with pytest.raises(ValidationError):
        ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **fields)


def test_bad_content_part_names_the_part():
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest(messages=[{"role": "user", "content": [{"type": "image"}]}])
    assert "needs a 'image' field" in str(error.value)


def test_completion_request_prompts():
    assert CompletionRequest(prompt="a").prompts == ["a"]
    assert CompletionRequest(prompt=["a", "b"]).prompts == ["a", "b"]
    assert CompletionRequest(prompt=[1, 2]).prompts == [[1, 2]]
    assert CompletionRequest(prompt=[[1], [2, 3]]).prompts == [[1], [2, 3]]
    requests = CompletionRequest(prompt=["a", "b"]).to_infer_requests()
    assert [r.prompt for r in requests] == ["a", "b"] and all(not r.messages for r in requests)
    config = CompletionRequest(prompt="a", logprobs=3).to_request_config()
    assert config.logprobs and config.top_logprobs == 3 and config.max_tokens == 16  # OpenAI's default
    for bad in ({"prompt": []}, {"prompt": [[]]}, {"prompt": "a", "suffix": "z"}, {"prompt": "a", "best_of": 3}):
        with pytest.raises(ValidationError):
            CompletionRequest(**bad)


def test_embedding_request_inputs():
    assert EmbeddingRequest(input="a").inputs == ["a"]
    assert EmbeddingRequest(input=[1, 2]).inputs == [[1, 2]]
    with pytest.raises(ValidationError):
        EmbeddingRequest(input=[])


def test_logit_bias_reaches_the_request_config_with_int_token_ids():
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], logit_bias={"50": -100, "7": 2.5})
    assert request.to_request_config().logit_bias == {50: -100.0, 7: 2.5}
    assert CompletionRequest(prompt="a", logit_bias={"3": 1}).to_request_config().logit_bias == {3: 1.0}
