"""LMDeploy's token ids -> our `SequenceOutput`s: the text from the token ids through the pt path's own
incremental detokenizer (`TokenDecoder`), stop strings matched on that text, and a relay that hands a step's
outputs to the caller's event loop in one hop.

Tokens come as `TokenStep`s from the engine instance (swiftops.engines.lmdeploy.token_stream: new ids, a stop
token already left out) or, for media prompts, as `AsyncEngine.generate`'s GenOuts: token ids (possibly starting
with ones it held back before: the new ones are the last `generate_token_len - seen`), per-token
`{token_id: logprob}` dicts, cumulative `generate_token_len` / `input_token_len`, and a `finish_reason` on the
last one; a stop token (EOS) is never among them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from swiftops.engines.lmdeploy.token_stream import TokenStep
from swiftops.engines.outputs import OutputChannel, SequenceOutput
from swiftops.engines.token_decoder import TokenDecoder


def raw_logprobs(position: dict[int, float], token_id: int, top_k: int) -> tuple[float, list[tuple[int, float]]]:
    """One position's `{token_id: logprob}` as (the chosen token's logprob, the top_k most likely)."""
    ranked = sorted(position.items(), key=lambda item: -item[1])[:top_k]
    return float(position.get(token_id, float("-inf"))), [(int(t), float(lp)) for t, lp in ranked]


class ChoiceTracker:
    """One choice's GenOuts -> SequenceOutputs."""

    def __init__(
        self, index: int, tokenizer: Any, prompt_ids: list[int], stops: list[str], top_logprobs: int | None
    ) -> None:
        self.index = index
        self.decoder = TokenDecoder(
            tokenizer, prompt_ids, index, tuple(s for s in stops if s), want_logprobs=top_logprobs is not None
        )
        self.top_logprobs = top_logprobs  # None: logprobs not asked for
        self.seen = 0  # tokens handed to the decoder
        self.finished = False

    @property
    def stopped_by_string(self) -> bool:
        return self.decoder.stopped_by_string

    def convert(self, out: Any) -> SequenceOutput:
        """One of `AsyncEngine.generate`'s GenOuts (media prompts)."""
        produced = int(out.generate_token_len or 0)
        new = max(0, produced - self.seen)
        token_ids = list(out.token_ids or [])[-new:] if new else []
        # The logprobs are of the newest tokens only: align them from the end.
        logprobs = list(out.logprobs)[-len(token_ids) :] if out.logprobs and token_ids else None
        return self.feed(TokenStep(token_ids, logprobs, out.finish_reason, produced, out.input_token_len))

    def feed(self, step: TokenStep) -> SequenceOutput:
        """New tokens, from the engine instance (swiftops.engines.lmdeploy.token_stream) or a GenOut."""
        token_ids = step.token_ids
        self.seen += len(token_ids)
        raw = None
        if self.top_logprobs is not None and step.logprobs:
            raw = [raw_logprobs(p, t, self.top_logprobs) for p, t in zip(step.logprobs, token_ids, strict=False)]
        result = self.decoder.feed(token_ids, step.finish_reason, step.prompt_tokens, raw, final_token_is_text=True)
        if result.finish_reason is not None:
            self.finished = True
        result.completion_tokens = step.generated  # LMDeploy's own count
        return result


class LoopRelay:
    """Hands outputs from LMDeploy's loop thread to one caller's event loop: whatever arrives before the caller's
    loop runs again goes over in one `call_soon_threadsafe` (each wakes that loop through a pipe), so a step of
    many sequences costs one hop, not one per output."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[OutputChannel, SequenceOutput]] = []
        self._scheduled = False
        self._lock = threading.Lock()

    def push(self, queue: OutputChannel, out: SequenceOutput) -> None:
        with self._lock:
            self._items.append((queue, out))
            if self._scheduled:
                return
            self._scheduled = True
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for queue, out in items:
            queue.put_nowait(out)
