"""A server's streamed answer read back, for `InferClient`: chat or completion events -> per-choice
`SequenceOutput`s, the inverse of the server's shapers (swiftops.server.chat_stream, completion_stream).

From these outputs `response_builder.stream_response` shapes the chunks a Python caller gets, exactly as for the
local engines: nothing here builds a chunk. The one difference to bridge is where the token counts come: a local
engine's outputs carry them as they go, while the server sends usage in an extra last event (InferClient always
asks for it with stream_options.include_usage). So the output that finishes the last choice waits for that event
and takes its counts from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.protocol import ChatCompletionTokenLogprob, ChoiceLogprobs, CompletionLogprobs, ToolCall, TopLogprob


def chat_logprobs(legacy: CompletionLogprobs | None) -> ChoiceLogprobs | None:
    """The completions API's parallel lists -> chat-style logprobs (what the local engines return)."""
    if legacy is None:
        return None
    content = []
    for i, token in enumerate(legacy.tokens):
        top = (legacy.top_logprobs[i] if i < len(legacy.top_logprobs) else None) or {}
        content.append(
            ChatCompletionTokenLogprob(
                token=token,
                logprob=legacy.token_logprobs[i] or 0.0,
                top_logprobs=[TopLogprob(token=t, logprob=lp) for t, lp in top.items()],
            )
        )
    return ChoiceLogprobs(content=content)


def _chat_output(choice: dict[str, Any]) -> SequenceOutput:
    delta = choice.get("delta") or {}
    entries = (choice.get("logprobs") or {}).get("content") or []
    calls = delta.get("tool_calls")
    return SequenceOutput(
        index=choice["index"],
        text=delta.get("content") or "",
        logprobs=[ChatCompletionTokenLogprob.model_validate(e) for e in entries],
        finish_reason=choice.get("finish_reason"),
        # The server streams each tool call whole, in its choice's last chunk.
        tool_calls=[ToolCall.model_validate(call) for call in calls] if calls else None,
    )


def _completion_output(choice: dict[str, Any]) -> SequenceOutput:
    legacy = choice.get("logprobs")
    logprobs = chat_logprobs(CompletionLogprobs.model_validate(legacy)) if legacy else None
    return SequenceOutput(
        index=choice["index"],
        text=choice.get("text") or "",
        logprobs=list(logprobs.content or []) if logprobs is not None else [],
        finish_reason=choice.get("finish_reason"),
    )


async def read_outputs(
    events: AsyncIterator[dict[str, Any]], n: int, *, completion: bool
) -> AsyncIterator[SequenceOutput]:
    """The outputs of one request's `n` choices from its events (`completion`: the /v1/completions format)."""
    read = _completion_output if completion else _chat_output
    counts = [0] * n  # per choice, outputs with text: the server reports its token counts only in total
    finished = 0
    last: SequenceOutput | None = None  # the output that finishes the last choice, waiting for the usage
    try:
        async for event in events:
            usage = event.get("usage")
            if usage and not event.get("choices"):
                if last is not None:
                    last.prompt_tokens = usage["prompt_tokens"]
                    # The other choices' counts plus this one's add up to the server's total.
                    last.completion_tokens = usage["completion_tokens"] - (sum(counts) - counts[last.index])
                continue
            for choice in event.get("choices") or []:
                out = read(choice)
                if out.text:
                    counts[out.index] += 1
                out.completion_tokens = counts[out.index]
                if out.finish_reason is not None:
                    finished += 1
                    if finished == n:
                        last = out
                        continue
                yield out
        if last is not None:
            yield last
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # an async generator: drops the connection now
