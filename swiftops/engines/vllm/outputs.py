"""vLLM's streamed `RequestOutput`s -> our `SequenceOutput`s, which response_builder turns into responses.

Duck-typed on vLLM's shapes (RequestOutput.outputs: [CompletionOutput(index, text, token_ids, logprobs,
finish_reason)], prompt_token_ids), with `output_kind=DELTA`: each output carries only what is new.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.protocol import ChatCompletionTokenLogprob, TopLogprob

_FINISH = {"stop": "stop", "length": "length", "abort": "abort", "error": "error"}


def _token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def logprob_entries(
    token_ids: list[int], positions: list[dict[int, Any]] | None, top_k: int, decode: Callable[[int], str]
) -> list[ChatCompletionTokenLogprob]:
    """One OpenAI logprob entry per generated token from vLLM's per-position {token_id: Logprob} dicts."""
    if not positions:
        return []
    entries = []
    for token_id, position in zip(token_ids, positions, strict=False):

        def text(tid: int, info: Any) -> str:
            decoded = getattr(info, "decoded_token", None)
            return decoded if decoded is not None else decode(tid)

        chosen = position.get(token_id)
        # vLLM always includes the sampled token; `rank` orders the alternatives (1 = most likely).
        ranked = sorted(position.items(), key=lambda item: getattr(item[1], "rank", None) or 0)
        tops = [
            TopLogprob(token=text(tid, info), logprob=float(info.logprob), bytes=_token_bytes(text(tid, info)))
            for tid, info in ranked[:top_k]
        ]
        token = text(token_id, chosen) if chosen is not None else decode(token_id)
        logprob = float(chosen.logprob) if chosen is not None else float("-inf")
        entries.append(
            ChatCompletionTokenLogprob(token=token, logprob=logprob, bytes=_token_bytes(token), top_logprobs=tops)
        )
    return entries


class OutputTracker:
    """Turns the DELTA outputs of one request into SequenceOutputs, counting tokens per choice."""

    def __init__(self, n: int, prompt_tokens: int, top_logprobs: int | None, decode: Callable[[int], str]):
        self.prompt_tokens = prompt_tokens
        self.top_logprobs = top_logprobs  # None: logprobs not asked for
        self.decode = decode
        self.completion_tokens = [0] * n
        self.finished = [False] * n

    @property
    def done(self) -> bool:
        return all(self.finished)

    def convert(self, request_output: Any) -> list[SequenceOutput]:
        prompt_ids = getattr(request_output, "prompt_token_ids", None)
        if prompt_ids:
            self.prompt_tokens = len(prompt_ids)
        outs = []
        for completion in request_output.outputs:
            i = completion.index
            if self.finished[i]:
                continue
            token_ids = list(completion.token_ids or [])
            self.completion_tokens[i] += len(token_ids)
            finish = completion.finish_reason
            if finish is not None:
                self.finished[i] = True
            logprobs = []
            if self.top_logprobs is not None:
                logprobs = logprob_entries(token_ids, completion.logprobs, self.top_logprobs, self.decode)
            outs.append(
                SequenceOutput(
                    index=i,
                    text=completion.text or "",
                    token_ids=token_ids,
                    logprobs=logprobs,
                    finish_reason=None if finish is None else _FINISH.get(finish, "stop"),
                    prompt_tokens=self.prompt_tokens,
                    completion_tokens=self.completion_tokens[i],
                )
            )
        if getattr(request_output, "finished", False):
            # A request vLLM ended without a finish_reason on some choice (e.g. aborted on shutdown).
            for i, done in enumerate(self.finished):
                if not done:
                    self.finished[i] = True
                    outs.append(
                        SequenceOutput(
                            index=i,
                            finish_reason="abort",
                            prompt_tokens=self.prompt_tokens,
                            completion_tokens=self.completion_tokens[i],
                        )
                    )
        return outs
