"""`InferStats`: throughput and latency of a run, as ms-swift's, plus TTFT and latency percentiles."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (q in [0, 100])."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class InferStats:
    """Collects what the engines report about finished requests; `compute()` summarises them.

    Engines call `start(request_id)` when a request is submitted, `first_token(request_id)` when its
    first text arrives and `finish(request_id, prompt_tokens, completion_tokens, n)` at the end.
    `update(response)` is accepted too (ms-swift's name) and takes the usage of a finished response.
    `track_prefix_cache(engine.prefix_cache_stats)` (done by `engine.infer(..., metrics=[stats])`) adds the prefix
    cache's queried and hit prompt tokens since then, and their ratio, to `compute()`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._t0: float | None = None
            self._t_last: float | None = None
            self._starts: dict[str, float] = {}
            self._first: dict[str, float] = {}
            self.num_prompt_tokens = 0
            self.num_generated_tokens = 0
            self.num_samples = 0
            self.num_requests = 0
            self.ttfts: list[float] = []
            self.latencies: list[float] = []
            self._prefix_source: Callable[[], tuple[int, int] | None] | None = None
            self._prefix_base = self._prefix_last = (0, 0)

    def track_prefix_cache(self, source: Callable[[], tuple[int, int] | None]) -> None:
        """Count the prefix cache of the engine whose `prefix_cache_stats` is `source`, from now on (once: later
        calls for the same engine keep the first baseline)."""
        with self._lock:
            if self._prefix_source == source:
                return
            base = source()
            if base is None:
                return
            self._prefix_source, self._prefix_base, self._prefix_last = source, base, base

    def start(self, request_id: str) -> None:
        now = time.perf_counter()
        with self._lock:
            if self._t0 is None:
                self._t0 = now
            self._starts[request_id] = now

    def first_token(self, request_id: str) -> None:
        now = time.perf_counter()
        with self._lock:
            if request_id in self._starts and request_id not in self._first:
                self._first[request_id] = now
                self.ttfts.append(now - self._starts[request_id])

    def finish(self, request_id: str, prompt_tokens: int, completion_tokens: int, n: int = 1) -> None:
        now = time.perf_counter()
        with self._lock:
            start = self._starts.pop(request_id, None)
            if start is not None:
                self.latencies.append(now - start)
                if request_id not in self._first:  # nothing streamed: the first token came with the answer
                    self.ttfts.append(now - start)
                self._first.pop(request_id, None)
            if self._t0 is None:
                self._t0 = now
            self._t_last = now
            if self._prefix_source is not None:  # read now: the engine may be closed by the time of compute()
                self._prefix_last = self._prefix_source() or self._prefix_last
            self.num_prompt_tokens += prompt_tokens
            self.num_generated_tokens += completion_tokens
            self.num_samples += n
            self.num_requests += 1

    def update(self, response: Any) -> None:
        """Record a finished response that was not timed through start/finish (ms-swift's API)."""
        usage = getattr(response, "usage", None)
        choices = getattr(response, "choices", None) or []
        self.finish(
            getattr(response, "id", ""),
            getattr(usage, "prompt_tokens", 0),
            getattr(usage, "completion_tokens", 0),
            max(1, len(choices)),
        )

    def compute(self) -> dict[str, float]:
        with self._lock:
            runtime = (self._t_last - self._t0) if self._t0 is not None and self._t_last is not None else 0.0
            ttfts, lats = sorted(self.ttfts), sorted(self.latencies)
            out = {
                "num_prompt_tokens": self.num_prompt_tokens,
                "num_generated_tokens": self.num_generated_tokens,
                "num_samples": self.num_samples,
                "num_requests": self.num_requests,  # num_samples counts each of a request's n choices
                "runtime": round(runtime, 6),
                "samples/s": round(self.num_samples / runtime, 4) if runtime > 0 else 0.0,
                "tokens/s": round(self.num_generated_tokens / runtime, 4) if runtime > 0 else 0.0,
            }
            for name, values in (("ttft", ttfts), ("latency", lats)):
                for q in (50, 90, 99):
                    out[f"{name}_p{q}"] = round(_percentile(values, q), 6)
            if self._prefix_source is not None:
                now = self._prefix_source() or self._prefix_last  # a closed engine: its last counts
                self._prefix_last = now
                queries, hits = now[0] - self._prefix_base[0], now[1] - self._prefix_base[1]
                out["prefix_cache_queries"] = queries
                out["prefix_cache_hits"] = hits
                out["prefix_cache_hit_rate"] = round(hits / queries, 4) if queries else 0.0
            return out
