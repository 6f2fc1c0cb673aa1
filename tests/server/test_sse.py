"""Server-sent events byte for byte, as curl sees them: `data: {json}\n\n` ... `data: [DONE]\n\n`."""
from __future__ import annotations

import json


def _events(http, path: str, body: dict) -> tuple[bytes, list[str]]:
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(response.iter_bytes())
    assert raw.endswith(b"data: [DONE]\n\n")
    blocks = raw.decode("utf-8").split("\n\n")
    assert blocks[-1] == ""  # every event ends with a blank line
    for block in blocks[:-1]:
        assert block.startswith("data: ") and "\n" not in block, block
    return raw, [b[len("data: "):] for b in blocks[:-1]]


def test_chat_stream_framing_role_first_usage_last(http, served_name):
    _, events = _events(http, "/v1/chat/completions", {
        "model": served_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == served_name for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert all(c.get("usage") is None for c in chunks[:-1])


def test_chat_stream_without_include_usage_has_no_usage_chunk(http):
    _, events = _events(http, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "stream": True})
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] and c.get("usage") is None for c in chunks)


def test_completion_stream_framing_with_echo(http):
    _, events = _events(http, "/v1/completions", {"prompt": "one two", "max_tokens": 4, "temperature": 0,
                                                  "echo": True, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["text"] == "one two"
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 0
