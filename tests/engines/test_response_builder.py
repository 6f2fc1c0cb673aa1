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
