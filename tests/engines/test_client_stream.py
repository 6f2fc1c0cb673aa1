"""A server's stream read back (InferClient): events -> outputs -> the chunks every local engine gives."""
import asyncio
import json

from swiftops.engines.client_stream import read_outputs
from swiftops.engines.response_builder import stream_response
from swiftops.server.chat_stream import ChatStreamShaper
from swiftops.server.completion_stream import CompletionStreamShaper
from swiftops.engines.outputs import SequenceOutput


def _events(frames: list[bytes]) -> list[dict]:
    return [json.loads(frame[len(b"data: "):]) for frame in frames]


async def _aiter(items):
    for item in items:
        yield item


def _chunks(events, n, completion=False, want_logprobs=False):
    async def run():
        outputs = read_outputs(_aiter(events), n, completion=completion)
        return [c async for c in stream_response(outputs, n, "m", tools=False, want_logprobs=want_logprobs)]
    return asyncio.run(run())


def _server_outputs():
    """What an engine hands the server for n=2: choice 1 finishes first, each with its own token count."""
    return [
        SequenceOutput(index=0, text="Hel", prompt_tokens=5, completion_tokens=1),
        SequenceOutput(index=1, text="Bye", prompt_tokens=5, completion_tokens=1),
        SequenceOutput(index=1, text="!", prompt_tokens=5, completion_tokens=2, finish_reason="stop"),
        SequenceOutput(index=0, text="lo", prompt_tokens=5, completion_tokens=2),
        SequenceOutput(index=0, text=" you", prompt_tokens=5, completion_tokens=4, finish_reason="length"),
    ]


def test_chat_events_read_back_give_the_local_chunk_shape_with_the_servers_usage():
    shaper = ChatStreamShaper("chatcmpl-1", "m", n=2, tools=False)
    frames = [shaper.event(out) for out in _server_outputs()] + [shaper.usage_event()]
    chunks = _chunks(_events(frames), 2)
    assert all(len(c.choices) == 1 for c in chunks)  # never a chunk without choices, as locally
    text = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i) for i in (0, 1)}
    assert text == {0: "Hello you", 1: "Bye!"}
    assert [c.choices[0].delta.role for c in chunks if c.choices[0].delta.role] == ["assistant", "assistant"]
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.model_dump() == shaper.usage() == {"prompt_tokens": 5, "completion_tokens": 6,
                                                                "total_tokens": 11}


def test_tool_calls_the_server_parsed_come_through_whole():
    shaper = ChatStreamShaper("chatcmpl-2", "m", n=1, tools=True)
    pieces = ["<tool_call>", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "</tool_call>"]
    outputs = [SequenceOutput(index=0, text=p, prompt_tokens=3, completion_tokens=i + 1,
                              finish_reason="stop" if i == len(pieces) - 1 else None) for i, p in enumerate(pieces)]
    frames = [f for f in (shaper.event(out) for out in outputs) if f is not None] + [shaper.usage_event()]
    chunks = _chunks(_events(frames), 1)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    last = chunks[-1].choices[0]
    assert last.finish_reason == "tool_calls"
    assert last.delta.tool_calls[0].function["name"] == "get_weather"
    assert json.loads(last.delta.tool_calls[0].function["arguments"]) == {"city": "Paris"}
    assert chunks[-1].usage.completion_tokens == 3


def test_completion_events_read_back_as_chat_chunks_with_logprobs():
    from swiftops.protocol import ChatCompletionTokenLogprob, TopLogprob

    def entry(token):
        return ChatCompletionTokenLogprob(token=token, logprob=-0.5, top_logprobs=[TopLogprob(token=token, logprob=-0.5)])
    shaper = CompletionStreamShaper("cmpl-1", "m", n=1, echoes=[""])
    outputs = [SequenceOutput(index=0, text="a", logprobs=[entry("a")], prompt_tokens=2, completion_tokens=1),
               SequenceOutput(index=0, text="b", logprobs=[entry("b")], prompt_tokens=2, completion_tokens=2,
                              finish_reason="stop")]
    frames = shaper.echo_events() + [shaper.event(0, out) for out in outputs] + [shaper.usage_event()]
    chunks = _chunks(_events(frames), 1, completion=True, want_logprobs=True)
    assert "".join(c.choices[0].delta.content for c in chunks) == "ab"
    assert [t.token for c in chunks for t in c.choices[0].logprobs.content] == ["a", "b"]
    assert chunks[-1].usage.model_dump() == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_text_chunks_from_the_template_are_byte_for_byte_the_whole_chunk_encoded():
    """The shapers encode only the text of a middle chunk into bytes built once per choice: the events are the
    same bytes as the chunk dict serialized whole, for model names and texts with quotes, escapes, U+2028 and
    non-ASCII characters, and every event stays on one line."""
    from swiftops.server.sse import json_event

    model = 'm"od\\el\u2028\u4f60\x00swiftops-text\x00'  # even the slot's own characters
    texts = ["plain", 'quo"te', "back\\slash", "line\nbreak", "sep\u2028arator", "\u0085nel", "\u4f60\u597d", "",
             "\x00nul", "\U0001f642"]
    completion = CompletionStreamShaper("cmpl-9", model, n=2, echoes=["", ""])
    chat = ChatStreamShaper("chatcmpl-9", model, n=1, tools=False)
    chat.event(SequenceOutput(index=0, text="first", prompt_tokens=1, completion_tokens=1))  # the role chunk
    for k, text in enumerate(texts):
        index = k % 2
        got = completion.event(0, SequenceOutput(index=index, text=text or "x", prompt_tokens=1,
                                                 completion_tokens=k + 1))
        whole = json_event({"id": "cmpl-9", "object": "text_completion", "created": completion.created,
                            "model": model, "choices": [{"index": index, "text": text or "x",
                                                         "finish_reason": None, "logprobs": None}]})
        assert got == whole
        if text:
            got = chat.event(SequenceOutput(index=0, text=text, prompt_tokens=1, completion_tokens=k + 2))
            whole = json_event({"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": chat.created,
                                "model": model, "choices": [{"index": 0, "delta": {"content": text},
                                                             "finish_reason": None}]})
            assert got == whole
            assert got.count(b"\n") == 2 and json.loads(got[6:])["choices"][0]["delta"]["content"] == text
    assert set(completion.middle.templates) == {0, 1} and set(chat.middle.templates) == {0}
    assert completion.transcript()["choices"][0]["text"] == "".join(t or "x" for t in texts[0::2])
