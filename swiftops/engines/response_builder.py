"""Assembling OpenAI responses (whole or streamed) from the per-choice outputs an engine produces.

Shared by the backends that generate token by token (pt, vllm), so every backend returns the same shapes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from swiftops.engines.outputs import SequenceOutput
from swiftops.protocol import (
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    ChoiceLogprobs,
    DeltaMessage,
    DeltaToolCall,
    ToolCall,
    UsageInfo,
    new_id,
)
from swiftops.template.tool_calls import parse_tool_calls

_TOOL_MARKERS = ("<tool_call>", "[TOOL_CALLS]")


@dataclass
class ChoiceText:
    """One choice's text so far, and how much of it went out (tool-call markup is held back)."""

    text: str = ""
    emitted: int = 0
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0

    def streamable(self, tools: bool) -> str:
        """Text safe to stream now: with tools, nothing from a tool-call marker on (it becomes tool_calls)."""
        end = len(self.text)
        if tools and self.finish_reason is None:
            if self.text.lstrip().startswith("{"):
                end = 0
            for marker in _TOOL_MARKERS:
                at = self.text.find(marker)
                if at >= 0:
                    end = min(end, at)
        if tools and self.finish_reason is not None:
            content, calls = parse_tool_calls(self.text)
            if calls:
                end = len(content or "") if self.text.startswith(content or "") else 0
        out = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out


def final_message(choice: ChoiceText, tools: bool) -> tuple[ChatMessage, str | None]:
    if tools:
        content, calls = parse_tool_calls(choice.text)
        if calls:
            return ChatMessage(content=content, tool_calls=calls), "tool_calls"
    return ChatMessage(content=choice.text), choice.finish_reason


def _raise_error(out: SequenceOutput) -> None:
    if out.error is not None:
        raise out.error


async def collect_response(
    outputs: AsyncIterator[SequenceOutput], n: int, model: str, tools: bool, want_logprobs: bool
) -> ChatCompletionResponse:
    choices = [ChoiceText() for _ in range(n)]
    prompt_tokens = 0
    async for out in outputs:
        _raise_error(out)
        c = choices[out.index]
        c.text += out.text
        c.logprobs.extend(out.logprobs)
        c.completion_tokens = out.completion_tokens
        prompt_tokens = out.prompt_tokens
        if out.finish_reason is not None:
            c.finish_reason = out.finish_reason
    result = []
    for i, c in enumerate(choices):
        message, finish = final_message(c, tools)
        result.append(
            ChatCompletionResponseChoice(
                index=i,
                message=message,
                finish_reason=finish,
                logprobs=ChoiceLogprobs(content=c.logprobs) if want_logprobs else None,
            )
        )
    completion = sum(c.completion_tokens for c in choices)
    return ChatCompletionResponse(
        model=model,
        choices=result,
        usage=UsageInfo(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
        ),
    )


@dataclass
class ChunkDelta:
    """What one output shows of its choice in a chat stream, before either chat chunk format renders it."""

    index: int
    role: str | None
    content: str | None
    tool_calls: list[ToolCall] | None
    finish_reason: str | None
    logprobs: list[Any]  # this output's ChatCompletionTokenLogprob entries


class ChatStreamState:
    """A chat stream's choices so far, and what each output shows of them: the one place that decides a chat
    chunk's content, for both of its formats (the Python API's chunk objects here, the server's SSE events in
    swiftops.server.chat_stream). The first chunk of a choice carries the role; text that may turn out to be a
    tool call is held back, and the tool calls go out whole in the choice's last chunk."""

    def __init__(self, n: int, tools: bool) -> None:
        self.tools = tools
        self.choices = [ChoiceText() for _ in range(n)]
        self.started: set[int] = set()
        self.finish: dict[int, str | None] = {}  # per finished choice: its finish reason
        self.tool_calls: dict[int, list[ToolCall]] = {}
        self.prompt_tokens = 0

    @property
    def all_finished(self) -> bool:
        return len(self.finish) == len(self.choices)

    def delta(self, out: SequenceOutput) -> ChunkDelta | None:
        """The chunk content for one output, or None when it shows nothing yet (a held-back stop-string prefix)."""
        _raise_error(out)
        c = self.choices[out.index]
        c.text += out.text
        c.completion_tokens = out.completion_tokens
        self.prompt_tokens = out.prompt_tokens
        finish: str | None = None
        calls: list[ToolCall] | None = None
        if out.finish_reason is not None:
            c.finish_reason = out.finish_reason
            message, finish = final_message(c, self.tools)
            self.finish[out.index] = finish
            calls = out.tool_calls or message.tool_calls or None
            if calls:
                self.tool_calls[out.index] = calls
        content = c.streamable(self.tools) or None
        role = None
        if out.index not in self.started:
            self.started.add(out.index)
            role, content = "assistant", content or ""
        elif content is None and calls is None and finish is None and not out.logprobs:
            return None
        return ChunkDelta(out.index, role, content, calls, finish, out.logprobs)

    def usage(self) -> dict[str, int]:
        completion = sum(c.completion_tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


_set_attribute = object.__setattr__
M = TypeVar("M", bound=BaseModel)


def trusted(cls: type[M], fields: dict[str, Any]) -> M:
    """`cls.model_construct(**fields)` for a model without extra or private attributes, given every field in the
    model's order: the same object (tests/engines/test_response_builder.py holds them equal) at about a third of the
    cost, since model_construct walks the model's fields and defaults on each call and a stream builds three models
    per token."""
    model = cls.__new__(cls)
    _set_attribute(model, "__dict__", fields)
    _set_attribute(model, "__pydantic_fields_set__", set(fields))
    _set_attribute(model, "__pydantic_extra__", None)
    _set_attribute(model, "__pydantic_private__", None)
    return model


async def stream_response(
    outputs: AsyncIterator[SequenceOutput], n: int, model: str, tools: bool, want_logprobs: bool
) -> AsyncIterator[ChatCompletionStreamResponse]:
    """The Python API's chunks, as ms-swift streams them: the last one carries usage (OpenAI's wire format sends
    it in an extra chunk instead: swiftops.server.chat_stream)."""
    state = ChatStreamState(n, tools)
    response_id, created = new_id("chatcmpl"), int(time.time())
    try:
        async for out in outputs:
            d = state.delta(out)
            if d is None:
                continue
            tool_deltas = (
                [
                    DeltaToolCall(
                        index=k,
                        id=call.id,
                        type="function",
                        function={"name": call.function.name, "arguments": call.function.arguments},
                    )
                    for k, call in enumerate(d.tool_calls)
                ]
                if d.tool_calls
                else None
            )
            usage = UsageInfo(**state.usage()) if d.finish_reason is not None and state.all_finished else None
            logprobs = ChoiceLogprobs(content=d.logprobs) if want_logprobs and d.logprobs else None
            # One chunk per token and stream, from values we produced ourselves: nothing to validate.
            delta = trusted(DeltaMessage, {"role": d.role, "content": d.content, "tool_calls": tool_deltas})
            choice = trusted(
                ChatCompletionResponseStreamChoice,
                {"index": d.index, "delta": delta, "finish_reason": d.finish_reason, "logprobs": logprobs},
            )
            yield trusted(
                ChatCompletionStreamResponse,
                {
                    "id": response_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                },
            )
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]  # an async generator: stopping early aborts the generation
