"""SSE lines are never split by clients that split on U+2028, U+2029 or U+0085 (Python's str.splitlines,
some JavaScript readers): the server escapes them inside the JSON of each event."""
from __future__ import annotations

import json

from swiftops.protocol import ChatCompletionStreamResponse
from swiftops.server.sse import as_json_event

SEPARATORS = "a\u2028b\u2029c\u0085d"


def _assert_one_line_per_event(raw: bytes) -> list[dict]:
    lines = raw.decode("utf-8").splitlines()  # splits on U+2028 / U+2029 / U+0085 as well as \n
    events = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in events), events
    return [json.loads(line[6:]) for line in events if line != "data: [DONE]"]


def test_a_chunk_with_line_separators_stays_one_line():
    chunk = ChatCompletionStreamResponse.model_validate({
        "id": "x", "model": "m", "choices": [{"index": 0, "delta": {"content": SEPARATORS}}]})
    event = as_json_event(chunk)
    assert b"\\u2028" in event and "\u2028".encode() not in event
    (parsed,) = _assert_one_line_per_event(event)
    assert parsed["choices"][0]["delta"]["content"] == SEPARATORS  # the escapes decode to the same text


def test_a_streamed_answer_with_line_separators_reaches_the_client_whole(rel_http):
    """The echoed prompt is streamed output: it carries the three separators through the real server."""
    prompt = f"before {SEPARATORS} after"
    with rel_http.stream("POST", "/v1/completions", json={"prompt": prompt, "max_tokens": 3, "temperature": 0,
                                                         "echo": True, "stream": True}) as response:
        assert response.status_code == 200
        raw = b"".join(response.iter_bytes())
    chunks = _assert_one_line_per_event(raw)
    assert chunks[0]["choices"][0]["text"] == prompt
