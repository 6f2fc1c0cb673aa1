"""The chat wire format's stream: an engine's per-choice outputs -> `chat.completion.chunk` events.

The one place that shapes chat chunks. Plain dicts serialized once each (no pydantic object per token): the
first chunk of a choice carries the role, tool calls go out whole at the choice's end, usage goes in an extra
last chunk (only with stream_options.include_usage, as OpenAI does).
"""

from __future__ import annotations

import time
from typing import Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.response_builder import ChoiceText, final_message
from swiftops.server.sse import json_event


class ChatStreamShaper:
    def __init__(self, response_id: str, model: str, n: int, tools: bool) -> None:
        self.response_id = response_id
        self.model = model
        self.tools = tools
        self.created = int(time.time())
        self.choices = [ChoiceText() for _ in range(n)]
        self.started: set[int] = set()
        self.tool_calls: dict[int, list[dict[str, Any]]] = {}
        self.finish: dict[int, str | None] = {}
        self.prompt_tokens = 0

    def event(self, out: SequenceOutput) -> bytes | None:
        """The chunk for one output, or None when it shows nothing yet (a held-back stop-string prefix)."""
        if out.error is not None:
            raise out.error
        c = self.choices[out.index]
        c.text += out.text
        c.completion_tokens = out.completion_tokens
        self.prompt_tokens = out.prompt_tokens
        finish = None
        tool_deltas = None
        if out.finish_reason is not None:
            c.finish_reason = out.finish_reason
            message, finish = final_message(c, self.tools)
            self.finish[out.index] = finish
            calls = out.tool_calls or message.tool_calls
            if calls:
                tool_deltas = [
                    {
                        "index": k,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": call.function.arguments},
                    }
                    for k, call in enumerate(calls)
                ]
                self.tool_calls[out.index] = [call.model_dump() for call in calls]
        content = c.streamable(self.tools) or None
        delta: dict[str, Any] = {}
        if out.index not in self.started:
            self.started.add(out.index)
            delta["role"] = "assistant"
            content = content or ""
        elif content is None and tool_deltas is None and finish is None and not out.logprobs:
            return None
        if content is not None:
            delta["content"] = content
        if tool_deltas is not None:
            delta["tool_calls"] = tool_deltas
        choice: dict[str, Any] = {"index": out.index, "delta": delta, "finish_reason": finish}
        if out.logprobs:
            choice["logprobs"] = {"content": [entry.model_dump() for entry in out.logprobs]}
        return json_event(
            {
                "id": self.response_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
            }
        )

    def usage(self) -> dict[str, int]:
        completion = sum(c.completion_tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

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
        for i, c in enumerate(self.choices):
            message: dict[str, Any] = {"role": "assistant", "content": c.text[: c.emitted]}  # as streamed
            if i in self.tool_calls:
                message["tool_calls"] = self.tool_calls[i]
            choices.append({"index": i, "message": message, "finish_reason": self.finish.get(i)})
        return {
            "id": self.response_id,
            "object": "chat.completion",
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }
