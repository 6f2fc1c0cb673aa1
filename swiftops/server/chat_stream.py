"""The chat wire format's stream: an engine's per-choice outputs -> `chat.completion.chunk` events.

The one place that renders chat chunks as SSE: plain dicts serialized once each (no pydantic object per token).
What a chunk shows (role first, held-back tool-call text, tool calls whole at the choice's end) is decided by
`ChatStreamState`, shared with the Python API's chunks; usage goes in an extra last chunk (only with
stream_options.include_usage, as OpenAI does).
"""

from __future__ import annotations

import time
from typing import Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.response_builder import ChatStreamState
from swiftops.server.sse import TextChunkEvents, json_event


class ChatStreamShaper:
    def __init__(self, response_id: str, model: str, n: int, tools: bool) -> None:
        self.response_id = response_id
        self.model = model
        self.created = int(time.time())
        self.state = ChatStreamState(n, tools)
        self.middle = TextChunkEvents(lambda index, text: self._chunk(index, {"content": text}))

    def event(self, out: SequenceOutput) -> bytes | None:
        """The chunk for one output, or None when it shows nothing yet (a held-back stop-string prefix)."""
        d = self.state.delta(out)
        if d is None:
            return None
        if d.content is not None and d.role is None and not d.tool_calls and not d.logprobs and d.finish_reason is None:
            return self.middle.event(d.index, d.content)  # every chunk but a choice's first and last
        delta: dict[str, Any] = {}
        if d.role is not None:
            delta["role"] = d.role
        if d.content is not None:
            delta["content"] = d.content
        if d.tool_calls:
            delta["tool_calls"] = [
                {
                    "index": k,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for k, call in enumerate(d.tool_calls)
            ]
        logprobs = {"content": [entry.model_dump() for entry in d.logprobs]} if d.logprobs else None
        return json_event(self._chunk(d.index, delta, d.finish_reason, logprobs))

    def _chunk(
        self, index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        return {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def usage(self) -> dict[str, int]:
        return self.state.usage()

    def usage_event(self) -> bytes:
        return json_event(
            {
                "id": self.response_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            }
        )

    def transcript(self) -> dict[str, Any]:
        """The streamed answer put back together, for --result_path and verbose logs."""
        choices = []
        for i, c in enumerate(self.state.choices):
            message: dict[str, Any] = {"role": "assistant", "content": c.text[: c.emitted]}  # as streamed
            if i in self.state.tool_calls:
                message["tool_calls"] = [call.model_dump() for call in self.state.tool_calls[i]]
            choices.append({"index": i, "message": message, "finish_reason": self.state.finish.get(i)})
        return {
            "id": self.response_id,
            "object": "chat.completion",
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }
