"""Multimodal requests on the pt engine (tiny random Qwen2.5-VL): batching with text, chunked prefill through
an image, agreement with transformers' own generate, limits and errors."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.protocol import BadRequestError, UnsupportedError
from swiftops.protocol.settings import MediaSettings

GREEDY = RequestConfig(max_tokens=12, temperature=0)
BLUE = Image.new("RGB", (112, 84), (9, 99, 199))
RED = Image.new("RGB", (84, 112), (200, 30, 30))


def _requests():
    return [InferRequest(messages=[{"role": "user", "content": "who are you?"}]),
            InferRequest(messages=[{"role": "user", "content": "<image><image>What differs?"}], images=[BLUE, RED]),
            InferRequest(messages=[{"role": "user", "content": "<video>describe the video"}],
                         videos=[[BLUE, RED, BLUE, RED]]),
            InferRequest(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": BLUE}}, {"type": "text", "text": "what colour?"}]}])]


def _texts(engine, requests, config=GREEDY):
    return [r.choices[0].message.content for r in engine.infer(requests, config)]


@pytest.fixture(scope="module")
def engine(tiny_vlm_dir):
    eng = PtEngine(str(tiny_vlm_dir), max_batch_size=8)
    yield eng
    eng.close()


def test_multimodal_and_text_requests_batch_together(engine):
    assert engine.runner_name == "paged"
    batched = _texts(engine, _requests())
    assert batched == [_texts(engine, [r])[0] for r in _requests()]
    assert len(set(batched)) == len(batched)


def test_greedy_tokens_match_transformers_generate(engine):
    request = _requests()[1]
    inputs = engine.encoder.encode(request)
    with torch.inference_mode():
        out = engine.model.generate(**inputs.tensors, max_new_tokens=8, do_sample=False)
    want = engine.tokenizer.decode(out[0, len(inputs.input_ids):], skip_special_tokens=True)
    got = _texts(engine, [request], RequestConfig(max_tokens=8, temperature=0))[0]
    assert got == want


def test_chunked_prefill_through_an_image_and_the_fallback_agree(tiny_vlm_dir, engine):
    want = _texts(engine, _requests())
    chunked = PtEngine(str(tiny_vlm_dir), max_batch_size=8, max_num_batched_tokens=16)
    fallback = PtEngine(str(tiny_vlm_dir), max_batch_size=8, runner="fallback")
    try:
        assert _texts(chunked, _requests()) == want
        assert _texts(fallback, _requests()) == want
    finally:
        chunked.close()
        fallback.close()


def test_streaming_a_multimodal_request(engine):
    request = _requests()[1]
    chunks = list(engine.infer([request], GREEDY.model_copy(update={"stream": True}))[0])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == _texts(engine, [request])[0]


def test_pixel_limits_change_the_prompt_length(tiny_vlm_dir, engine):
    big = Image.new("RGB", (448, 448), (1, 2, 3))
    request = InferRequest(messages=[{"role": "user", "content": "<image>hi"}], images=[big])
    full = engine.infer([request], RequestConfig(max_tokens=1))[0].usage.prompt_tokens
    small = PtEngine(str(tiny_vlm_dir), media=MediaSettings(max_pixels=112 * 112))
    try:
        limited = small.infer([request], RequestConfig(max_tokens=1))[0].usage.prompt_tokens
    finally:
        small.close()
    assert limited < full


def test_tags_and_media_must_match(engine, tiny_model_dir):
    with pytest.raises(BadRequestError):
        engine.infer([InferRequest(messages=[{"role": "user", "content": "<image><image>two?"}], images=[BLUE])],
                     GREEDY)
    text_only = PtEngine(str(tiny_model_dir))
    try:
        with pytest.raises(UnsupportedError, match="multimodal model"):
            text_only.infer([InferRequest(messages=[{"role": "user", "content": "<image>hi"}], images=[BLUE])],
                            GREEDY)
    finally:
        text_only.close()
