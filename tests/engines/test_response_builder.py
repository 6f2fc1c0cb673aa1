"""Response assembly from engine outputs: tool calls streamed as OpenAI does, usage on the last chunk."""
import asyncio
import json

from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.response_builder import collect_response, stream_response

PIECES = ["Sure. ", "<tool_call>", '{"name": "get_weather", ', '"arguments": {"city": "Paris"}}', "</tool_call>"]


async def _outputs():
    for i, piece in enumerate(PIECES):
        last = i == len(PIECES) - 1
        yield SequenceOutput(index=0, text=piece, prompt_tokens=9, completion_tokens=i + 1,
                             finish_reason="stop" if last else None)


def test_tool_calls_are_parsed_and_never_streamed_as_content():
    async def run():
        chunks = [c async for c in stream_response(_outputs(), 1, "m", tools=True, want_logprobs=False)]
        whole = await collect_response(_outputs(), 1, "m", tools=True, want_logprobs=False)
        return chunks, whole
    chunks, whole = asyncio.run(run())
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == "Sure. "
    assert chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices[0].finish_reason == "tool_calls"
    call = last.choices[0].delta.tool_calls[0]
    assert call.function["name"] == "get_weather" and json.loads(call.function["arguments"]) == {"city": "Paris"}
    assert last.usage.prompt_tokens == 9 and last.usage.completion_tokens == len(PIECES)
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.content == "Sure."
    assert whole.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_without_tools_the_text_is_content():
    async def run():
        return await collect_response(_outputs(), 1, "m", tools=False, want_logprobs=False)
    whole = asyncio.run(run())
    assert whole.choices[0].message.content == "".join(PIECES)
    assert whole.choices[0].finish_reason == "stop" and whole.usage.total_tokens == 9 + len(PIECES)


def test_trusted_chunks_equal_pydantics_model_construct():
    """The stream's chunks skip model_construct's walk over fields and defaults (`trusted`): for every chunk class,
    with and without optional parts, the object is model_construct's: equal, the same JSON, the same fields set."""
    from swiftops.engines.response_builder import trusted
    from swiftops.protocol import (
        ChatCompletionResponseStreamChoice,
        ChatCompletionStreamResponse,
        DeltaMessage,
        DeltaToolCall,
        UsageInfo,
    )

    calls = [DeltaToolCall(index=0, id="call_1", type="function", function={"name": "f", "arguments": "{}"})]
    for role, content, tool_calls, finish, usage in [
        ("assistant", "", None, None, None),
        (None, "ab", None, None, None),
        (None, None, calls, "tool_calls", UsageInfo(prompt_tokens=3, completion_tokens=2, total_tokens=5)),
    ]:
        delta_fields = {"role": role, "content": content, "tool_calls": tool_calls}
        built = []
        for make in (trusted, lambda cls, fields: cls.model_construct(**fields)):
            delta = make(DeltaMessage, dict(delta_fields))
            choice = make(ChatCompletionResponseStreamChoice,
                          {"index": 1, "delta": delta, "finish_reason": finish, "logprobs": None})
            chunk_fields = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                            "choices": [choice], "usage": usage}
            built.append(make(ChatCompletionStreamResponse, chunk_fields))
        fast, reference = built
        assert fast == reference
        assert fast.model_dump_json() == reference.model_dump_json()
        assert fast.model_fields_set == reference.model_fields_set
        assert fast.choices[0].delta.model_fields_set == reference.choices[0].delta.model_fields_set
        assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (
            reference.__pydantic_extra__, reference.__pydantic_private__)
        # fields in the model's order: trusted() is told them so, and the JSON above depends on it
        assert list(fast.__dict__) == list(ChatCompletionStreamResponse.model_fields)


def test_streamed_chunks_are_valid_models_in_field_order():
    """Every chunk stream_response builds (trusted, unvalidated) survives a validating round trip unchanged."""
    from swiftops.protocol import ChatCompletionStreamResponse

    outs = [SequenceOutput(index=0, text="He", prompt_tokens=3, completion_tokens=1),
            SequenceOutput(index=0, text="llo", prompt_tokens=3, completion_tokens=2, finish_reason="stop")]

    async def chunks():
        async def gen():
            for out in outs:
                yield out
        return [c async for c in stream_response(gen(), 1, "m", False, False)]

    streamed = asyncio.run(chunks())
    assert [c.choices[0].delta.content for c in streamed] == ["He", "llo"]
    assert streamed[-1].usage.completion_tokens == 2
    for chunk in streamed:
        text = chunk.model_dump_json()
        assert ChatCompletionStreamResponse.model_validate_json(text).model_dump_json() == text


def test_output_channel_hands_outputs_over_in_order_and_survives_a_cancelled_reader():
    from swiftops.engines.outputs import OutputChannel

    async def scenario():
        channel = OutputChannel(asyncio.get_running_loop())
        outs = [SequenceOutput(index=0, text=str(i)) for i in range(3)]
        channel.put_nowait(outs[0])  # before anyone waits
        assert not channel.empty() and await channel.get() is outs[0] and channel.empty()
        waiting = asyncio.ensure_future(channel.get())  # waits, then gets the next put
        await asyncio.sleep(0)
        channel.put_nowait(outs[1])
        assert await waiting is outs[1]
        gone = asyncio.ensure_future(channel.get())  # a reader cancelled while it waits
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        channel.put_nowait(outs[2])  # still delivered to the next reader
        assert channel.get_nowait() is outs[2]
        assert gone.cancelled()

    asyncio.run(scenario())
