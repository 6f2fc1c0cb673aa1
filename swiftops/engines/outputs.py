"""What a generating backend produces per choice and step, before it becomes an OpenAI response.

Shared by the pt, vllm and lmdeploy engines (and InferClient, reading a server's stream back), by
`response_builder`, which turns these into `ChatCompletionResponse` / stream chunks, and by the server's chunk
shapers (swiftops.server.chat_stream, completion_stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SequenceOutput:
    """What one engine step produced for a sequence, handed to its consumer."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)  # ChatCompletionTokenLogprob entries
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: BaseException | None = None
    tool_calls: list[Any] | None = None  # ToolCalls a server already parsed (InferClient); engines leave it None


def merge_outputs(first: SequenceOutput, later: SequenceOutput) -> SequenceOutput:
    """One output standing for two consecutive ones of the same choice (a reader that fell behind)."""
    return SequenceOutput(
        index=first.index,
        text=first.text + later.text,
        token_ids=first.token_ids + later.token_ids,
        logprobs=first.logprobs + later.logprobs,
        finish_reason=later.finish_reason,
        prompt_tokens=later.prompt_tokens,
        completion_tokens=later.completion_tokens,
        error=later.error,
        tool_calls=later.tool_calls,
    )
