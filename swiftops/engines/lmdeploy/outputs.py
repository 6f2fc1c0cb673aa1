"""LMDeploy's streamed `GenOut`s -> our `SequenceOutput`s, with stop strings matched on text.

LMDeploy streams one session per choice; each GenOut carries the new text (`response`), the new
token ids, per-token `{token_id: logprob}` dicts, cumulative `generate_token_len` / `input_token_len`,
and a `finish_reason` on the last one.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from swiftops.engines.outputs import SequenceOutput
from swiftops.protocol import ChatCompletionTokenLogprob, TopLogprob


class StopStrings:
    """Cuts text at the first stop string; holds back a tail that may be the start of one (not streamed yet)."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str, final: bool = False) -> str:
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            out, self.pending, self.hit = self.pending[:min(found)], "", True
            return out
        hold = 0 if final else self._held_tail()
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def _held_tail(self) -> int:
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(stop[:k]):
                    hold = k
                    break
        return hold


def logprob_entries(token_ids: list[int], positions: Optional[list[dict[int, float]]], top_k: int,
                    decode: Callable[[int], str]) -> list[ChatCompletionTokenLogprob]:
    entries = []
    for token_id, position in zip(token_ids, positions or []):
        ranked = sorted(position.items(), key=lambda item: -item[1])
        tops = [TopLogprob(token=decode(t), logprob=float(lp), bytes=list(decode(t).encode("utf-8")))
                for t, lp in ranked[:top_k]]
        token = decode(token_id)
        entries.append(ChatCompletionTokenLogprob(token=token, logprob=float(position.get(token_id, float("-inf"))),
                                                  bytes=list(token.encode("utf-8")), top_logprobs=tops))
    return entries


class ChoiceTracker:
    """One choice's GenOuts -> SequenceOutputs."""

    def __init__(self, index: int, stops: list[str], top_logprobs: Optional[int], decode: Callable[[int], str]):
        self.index = index
        self.stops = StopStrings(stops)
        self.top_logprobs = top_logprobs  # None: logprobs not asked for
        self.decode = decode
        self.finished = False

    def convert(self, out: Any) -> SequenceOutput:
        finish = out.finish_reason
        text = self.stops.feed(out.response or "", final=finish is not None)
        if self.stops.hit:
            finish = "stop"
        if finish is not None:
            self.finished = True
        logprobs = []
        if self.top_logprobs is not None and out.logprobs:
            # `token_ids` may start with tokens the detokenizer held back last time; the logprobs are of the
            # newest tokens only, so align them from the end.
            new_ids = list(out.token_ids or [])[-len(out.logprobs):]
            logprobs = logprob_entries(new_ids, out.logprobs, self.top_logprobs, self.decode)
        return SequenceOutput(index=self.index, text=text, token_ids=list(out.token_ids or []), logprobs=logprobs,
                              finish_reason=finish, prompt_tokens=out.input_token_len,
                              completion_tokens=out.generate_token_len)
