"""Bad input, hand-written: every case gets a 4xx in OpenAI's error shape (never a 5xx, never a hang), and the
next valid request still succeeds. The schema-driven fuzzing is in test_fuzz_openapi.py."""
from __future__ import annotations

import base64
import json

import httpx
import pytest

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
HI = [{"role": "user", "content": "hi"}]


def _chat(**fields) -> bytes:
    return json.dumps({"messages": HI, "max_tokens": 2, **fields}).encode()


def _nested(depth: int) -> bytes:
    return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"


def _image_part(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


CASES = {
    "malformed JSON": (CHAT, b'{"messages": [{"role": "user", "content": "x"}'),
    "empty body": (CHAT, b""),
    "a JSON array": (CHAT, b"[1, 2, 3]"),
    "a JSON string": (CHAT, b'"hello"'),
    "non-UTF-8 bytes": (CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}'),
    "a lone surrogate escape": (CHAT, b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}'),
    "deeply nested JSON": (CHAT, _nested(100_000)),
    "nested but valid depth": (CHAT, _nested(64)),
    "messages is a string": (CHAT, json.dumps({"messages": "hi"}).encode()),
    "max_tokens is text": (CHAT, _chat(max_tokens="ten")),
    "stream is a list": (CHAT, _chat(stream=[1])),
    "empty messages": (CHAT, json.dumps({"messages": []}).encode()),
    "unknown role": (CHAT, json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode()),
    "unknown content part": (CHAT, json.dumps({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]})
                             .encode()),
    "negative temperature": (CHAT, _chat(temperature=-0.5)),
    "NaN temperature": (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
    "infinite temperature": (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "temperature": Infinity}'),
    "max_tokens zero": (CHAT, _chat(max_tokens=0)),
    "max_tokens negative": (CHAT, _chat(max_tokens=-5)),
    "n zero": (CHAT, _chat(n=0)),
    "n too large": (CHAT, _chat(n=10_000)),
    "top_logprobs too large": (CHAT, _chat(logprobs=True, top_logprobs=21)),
    "top_logprobs negative": (CHAT, _chat(logprobs=True, top_logprobs=-1)),
    "top_logprobs without logprobs": (CHAT, _chat(top_logprobs=2)),
    "top_p above one": (CHAT, _chat(top_p=1.5)),
    "seed at 2**63": (CHAT, _chat(seed=2 ** 63)),
    "seed far beyond int64": (CHAT, _chat(seed=10 ** 40)),
    "unknown field": (CHAT, _chat(logit_bias_typo={"1": 2})),
    "unknown model": (CHAT, _chat(model="../../etc/passwd")),
    "prompt longer than the context": (CHAT, json.dumps({"messages": [{"role": "user", "content": "word " * 2000}]})
                                       .encode()),
    "10 MB of media for a text model": (CHAT, json.dumps({"messages": _image_part(
        "data:image/png;base64," + "A" * 10_000_000)}).encode()),
    "invalid base64 image": (CHAT, json.dumps({"messages": _image_part("data:image/png;base64,!!not-base64!!")})
                             .encode()),
    "base64 that is no image": (CHAT, json.dumps({"messages": _image_part(
        "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode())}).encode()),
    # A text-only model reads a bare `<image>` as text; tags without media on a multimodal model are a 400 in
    # tests/template/test_multimodal.py (the pt server does not serve VLMs yet).
    "media on a text-only model": (CHAT, json.dumps({"messages": [{"role": "user", "content": "<image>what?"}],
                                                     "images": [base64.b64encode(b"x" * 64).decode()]}).encode()),
    "completion prompt empty": (COMPLETIONS, json.dumps({"prompt": ""}).encode()),
    "completion prompt empty list": (COMPLETIONS, json.dumps({"prompt": []}).encode()),
    "completion negative token id": (COMPLETIONS, json.dumps({"prompt": [-1, 5]}).encode()),
    "completion token id beyond the vocabulary": (COMPLETIONS, json.dumps({"prompt": [2 ** 40]}).encode()),
    "completion logprobs too large": (COMPLETIONS, json.dumps({"prompt": "x", "logprobs": 99}).encode()),
    "completion best_of below n": (COMPLETIONS, json.dumps({"prompt": "x", "n": 2, "best_of": 1}).encode()),
    "embeddings on a chat model": (EMBEDDINGS, json.dumps({"input": "x"}).encode()),
    "embeddings of nothing": (EMBEDDINGS, json.dumps({"input": []}).encode()),
}


SLOW_CASES = {  # tokenizing 10 MB takes 10-20 s of CPU here: `make reliability` only
    "10 MB of text": (CHAT, json.dumps({"messages": [{"role": "user", "content": "ab " * 3_500_000}]}).encode()),
}
CASES.update(SLOW_CASES)


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW_CASES else []) for c in CASES])
def test_bad_input_gets_a_4xx_in_openai_shape_and_serving_goes_on(rel_http, error_shape, assert_still_serving,
                                                                   case):
    route, body = CASES[case]
    response = rel_http.post(route, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    error_shape(response)
    assert_still_serving()


def test_huge_max_tokens_is_refused_and_a_default_is_bounded_by_the_context(rel_http, error_shape):
    """A max_tokens the client gave beyond the context is a 400 (vLLM's answer; issue 21 row 13: silently
    clamping it hid the client's mistake); without one, generation is capped at the room the prompt leaves."""
    response = rel_http.post(CHAT, json={"messages": HI, "max_tokens": 10 ** 30, "temperature": 0})
    assert response.status_code == 400
    assert "context length of 512" in error_shape(response)["message"]
    response = rel_http.post(CHAT, json={"messages": HI, "ignore_eos": True, "temperature": 0}, timeout=120)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 512  # the tiny model's context
    assert response.json()["choices"][0]["finish_reason"] == "length"


def test_wrong_content_type_and_methods(rel_http, error_shape):
    response = rel_http.post(CHAT, content=_chat(), headers={"content-type": "text/plain"})
    assert response.status_code in (200, 400, 415, 422)  # FastAPI parses JSON regardless of the header, or 4xx
    if response.status_code != 200:
        error_shape(response)
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = rel_http.request(method, CHAT)
        assert response.status_code == 405, (method, response.status_code)
        error_shape(response)


def test_slow_partial_body_does_not_hang_the_server(rel_server, rel_api_key, assert_still_serving):
    """A client that announces a body and never sends it holds only its own connection."""
    import socket

    with socket.create_connection((rel_server.host, rel_server.port), timeout=10) as stalled:
        stalled.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {rel_api_key}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"messages\"".encode())
        assert_still_serving()
    assert_still_serving()


def test_a_huge_prompt_does_not_stall_other_clients(rel_server, rel_api_key):
    """Tokenizing megabytes takes seconds (10 MB: 10-20 s here). The tokenizer releases the GIL, so run off the event
    loop it stalls no one: /health, polled all along, must keep answering within a second."""
    import asyncio
    import time

    big = {"messages": [{"role": "user", "content": "ab " * 1_000_000}], "max_tokens": 2}

    async def scenario():
        async with httpx.AsyncClient(base_url=rel_server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {rel_api_key}"}) as client:
            request = asyncio.ensure_future(client.post(CHAT, json=big))
            slowest = 0.0
            while not request.done():
                start = time.monotonic()
                await client.get("/health")
                slowest = max(slowest, time.monotonic() - start)
                await asyncio.sleep(0.05)
            return (await request).status_code, slowest

    status, slowest = asyncio.run(scenario())
    assert status == 400
    assert slowest < 1.5, f"/health took {slowest:.1f}s while the prompt was tokenized"
