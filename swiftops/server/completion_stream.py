"""The completions wire format's stream: per-choice outputs of every prompt -> `text_completion` events.

The one place that shapes completion chunks: plain dicts serialized once each. Choice `i * n + j` is choice j
of prompt i, as OpenAI numbers them; `echo` sends each prompt's text first; usage (all prompts together) goes
in an extra last chunk with stream_options.include_usage.
"""

from __future__ import annotations

import time
from typing import Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.protocol import ChoiceLogprobs, CompletionLogprobs
from swiftops.server.sse import TextChunkEvents, json_event


def legacy_logprobs(logprobs: ChoiceLogprobs | None, offset: int) -> tuple[CompletionLogprobs | None, int]:
    """Chat-style logprobs -> the completions API's parallel lists; `offset` is where the text starts."""
    if logprobs is None or logprobs.content is None:
        return None, offset
    out = CompletionLogprobs()
    for entry in logprobs.content:
        out.tokens.append(entry.token)
        out.token_logprobs.append(entry.logprob)
        out.top_logprobs.append({t.token: t.logprob for t in entry.top_logprobs} or None)
        out.text_offset.append(offset)
        offset += len(entry.token)
    return out, offset


class CompletionStreamShaper:
    def __init__(self, response_id: str, model: str, n: int, echoes: list[str]) -> None:
        self.response_id = response_id
        self.model = model
        self.n = n
        self.echoes = echoes
        self.created = int(time.time())
        self.offsets: dict[int, int] = {}
        self.texts: dict[int, list[str]] = {}  # each choice's pieces, joined once for the transcript
        self.middle = TextChunkEvents(lambda index, text: self._chunk(index, text, None, None))
        self.finish: dict[int, str | None] = {}
        self.prompt_tokens: dict[int, int] = {}
        self.completion_tokens: dict[int, int] = {}

    def _chunk(self, index: int, text: str, finish_reason: str | None, logprobs: Any) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs}],
        }

    def _event(self, index: int, text: str, finish_reason: str | None, logprobs: Any) -> bytes:
        self.texts.setdefault(index, []).append(text)
        if finish_reason is None and logprobs is None:  # every chunk but a choice's last: only the text changes
            return self.middle.event(index, text)
        return json_event(self._chunk(index, text, finish_reason, logprobs))

    def echo_events(self) -> list[bytes]:
        events = []
        for i, echo in enumerate(self.echoes):
            for j in range(self.n):
                self.offsets[i * self.n + j] = len(echo)
                if echo:
                    events.append(self._event(i * self.n + j, echo, None, None))
        return events

    def event(self, prompt: int, out: SequenceOutput) -> bytes | None:
        """The chunk for one output of prompt `prompt`, or None when it shows nothing."""
        if out.error is not None:
            raise out.error
        index = prompt * self.n + out.index
        self.prompt_tokens[prompt] = out.prompt_tokens
        self.completion_tokens[index] = out.completion_tokens
        if out.finish_reason is not None:
            self.finish[index] = out.finish_reason
        if not out.text and out.finish_reason is None and not out.logprobs:
            return None
        logprobs = None
        if out.logprobs:
            legacy, self.offsets[index] = legacy_logprobs(
                ChoiceLogprobs(content=out.logprobs), self.offsets.get(index, 0)
            )
            logprobs = legacy.model_dump() if legacy is not None else None
        return self._event(index, out.text, out.finish_reason, logprobs)

    def usage(self) -> dict[str, int]:
        prompt = sum(self.prompt_tokens.values())
        completion = sum(self.completion_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def usage_event(self) -> bytes:
        return json_event(
            {
                "id": self.response_id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self.usage(),
            }
        )

    def transcript(self) -> dict[str, Any]:
        choices = [
            {"index": k, "text": "".join(pieces), "finish_reason": self.finish.get(k)}
            for k, pieces in sorted(self.texts.items())
        ]
        return {
            "id": self.response_id,
            "object": "text_completion",
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }
