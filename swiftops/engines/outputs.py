"""What a generating backend produces per choice and step, before it becomes an OpenAI response.

Shared by the pt, vllm and lmdeploy engines (and InferClient, reading a server's stream back), by
`response_builder`, which turns these into `ChatCompletionResponse` / stream chunks, and by the server's chunk
shapers (swiftops.server.chat_stream, completion_stream).
"""

from __future__ import annotations

from collections import deque
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


class OutputChannel:
    """A request's outputs on its event loop, for its one reader: the part of asyncio.Queue the engines need (put
    and get on the loop, `empty`, `get_nowait`) without the size bound and the getter and putter bookkeeping. Every
    token of every stream of the pt and lmdeploy engines passes through here; an asyncio.Queue cost about a third
    of the loop's work per token."""

    __slots__ = ("_items", "_waiter", "_loop")

    def __init__(self, loop: Any) -> None:
        self._items: deque[SequenceOutput] = deque()
        self._waiter: Any = None  # the reader's future while it waits
        self._loop = loop

    def put_nowait(self, out: SequenceOutput) -> None:
        self._items.append(out)
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> SequenceOutput:
        return self._items.popleft()  # IndexError when empty: callers check `empty()` first

    async def get(self) -> SequenceOutput:
        while not self._items:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:  # cancelled while waiting
                    self._waiter = None
        return self._items.popleft()
