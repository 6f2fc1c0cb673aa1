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
