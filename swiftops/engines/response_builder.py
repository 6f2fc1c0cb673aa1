"""Assembling OpenAI responses (whole or streamed) from the per-choice outputs an engine produces.

Shared by the backends that generate token by token (pt, vllm), so every backend returns the same shapes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

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
    UsageInfo,
    new_id,
)
from swiftops.template.tool_calls import parse_tool_calls

if TYPE_CHECKING:
    from swiftops.protocol.response import FinishReason

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


async def stream_response(
    outputs: AsyncIterator[SequenceOutput], n: int, model: str, tools: bool, want_logprobs: bool
) -> AsyncIterator[ChatCompletionStreamResponse]:
    """Chunks as OpenAI streams them: the first per choice carries the role; the last one carries usage."""
    state = _StreamState(new_id("chatcmpl"), [ChoiceText() for _ in range(n)], model, tools, want_logprobs)
    try:
        async for out in outputs:
            chunk = state.chunk_for(out)
            if chunk is not None:
                yield chunk
    finally:
        # A consumer that stops early aborts the generation now, not at GC.
        await outputs.aclose()  # type: ignore[attr-defined]  # every engine's outputs are an async generator


@dataclass
class _StreamState:
    response_id: str
    choices: list[ChoiceText]
    model: str
    tools: bool
    want_logprobs: bool
    started: set[int] = field(default_factory=set)
    finished: int = 0
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk_for(self, out: SequenceOutput) -> ChatCompletionStreamResponse | None:
        _raise_error(out)
        c = self.choices[out.index]
        c.text += out.text
        c.completion_tokens = out.completion_tokens
        finish: str | None = None
        tool_deltas = None
        if out.finish_reason is not None:
            c.finish_reason = out.finish_reason
            message, finish = final_message(c, self.tools)
            if message.tool_calls:
                tool_deltas = [
                    DeltaToolCall(
                        index=k,
                        id=call.id,
                        type="function",
                        function={"name": call.function.name, "arguments": call.function.arguments},
                    )
                    for k, call in enumerate(message.tool_calls)
                ]
            self.finished += 1
        content = c.streamable(self.tools) or None
        role = None
        if out.index not in self.started:
            self.started.add(out.index)
            role, content = "assistant", content or ""
        elif content is None and tool_deltas is None and finish is None and not out.logprobs:
            return None  # nothing visible yet (e.g. a held-back stop-string prefix)
        usage = None
        if finish is not None and self.finished == len(self.choices):
            completion = sum(ch.completion_tokens for ch in self.choices)
            usage = UsageInfo(
                prompt_tokens=out.prompt_tokens,
                completion_tokens=completion,
                total_tokens=out.prompt_tokens + completion,
            )
        logprobs = ChoiceLogprobs(content=out.logprobs) if self.want_logprobs and out.logprobs else None
        # One chunk per token and stream: built without re-validating values we produced ourselves
        # (model_construct), which is most of a chunk's cost on a busy server. The engines' finish reasons are
        # FinishReason values (the cast says so to mypy).
        delta = DeltaMessage.model_construct(role=role, content=content, tool_calls=tool_deltas)
        choice = ChatCompletionResponseStreamChoice.model_construct(
            index=out.index, delta=delta, finish_reason=cast("FinishReason | None", finish), logprobs=logprobs
        )
        # Every field given: pydantic inspects a default_factory's signature on each use (slow per token).
        return ChatCompletionStreamResponse.model_construct(
            id=self.response_id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model,
            usage=usage,
            choices=[choice],
        )
