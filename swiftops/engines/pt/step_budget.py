"""How many prompt tokens a step may prefill beside decoding sequences without stalling their streams.

Every sequence decoding in a step waits for the whole step before its next token: a step that also prefills new
prompts is, for those streams, a long inter-token gap. With the default step budget (2,048 tokens) the
99th-percentile inter-token latency of 128 streaming clients of a 0.5B model on an H100 was 2.96x its median, the
slow gaps being the steps that prefilled new prompts beside the decode rows (benchmarks/RESULTS.md, serving).
vLLM and SGLang expose the trade as a
chunk size; here it is a ratio, which holds across models and GPUs: a step with `d` decode rows prefills at most
the tokens that keep it within `ratio` times the time of a decode step of `d` rows.

The time of a step is close to linear in its tokens, `fixed + per_token * tokens` (weights read once per step, then
compute per token), so the bound is `prefill <= (ratio - 1) * (fixed / per_token + d)`. The two constants come
from timing the mixed-step CUDA graphs at start-up (an idle step of the smallest and of the largest bucket). The
total goes to the nearest graph bucket when that leaves room for prefill, since a step costs its bucket's size.

The fit sees idle steps: every attention program exits at once, no sequence is sampled. A real step that admits
prompts costs more (on an H100 at 128 streams of the 0.5B shape, 4.61 ms for the 768-token steps where the fit said
2.55: 2.6x a decode step for a bound of 1.75x). So the engine also times the steps it runs (CUDA events around each
launch, read once its tokens are on the host: swiftops.engines.pt.step_clock) and, once a few steps of a graph
bucket are measured, the bound keeps to measured times: the largest bucket whose measured time stays within `ratio`
times the measured decode step. A bucket not yet measured is predicted from the fit, scaled as the nearest measured
bucket of its kind, and tried for a few steps when that prediction is near the limit, one bucket at a time past
what is measured; a time not refreshed for STALE_AFTER steps is tried again, so one disturbed mean does not hold
the bound down for good. Until a decode step and a prefilling step are both measured, the fit alone decides.

On by default where streams are served (`swiftops deploy`, `swiftops app`: SERVING_ITL_RATIO), off for the Python
API, whose callers want throughput; `--max_itl_ratio` sets it (swiftops.protocol.settings). Measured on an H100
at 128 clients (benchmarks/RESULTS.md, ninth session): on the 7B shape the bound took the inter-token latency's
p99 / p50 from 6.4 to 1.49 for 3.7% of served throughput (TTFT p99 449 -> 886 ms); on the 0.5B shape, where the
server process and not the GPU sets the pace, it changed nothing (3.85 -> 3.70, throughput +1.9%).
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

MIN_PREFILL_TOKENS = 64  # a step that decodes still prefills this much: new prompts always make progress
SERVING_ITL_RATIO = 1.75  # the server's default (see above); the Python API's is 0 (off)


MEASURED_AFTER = 3  # steps of one graph bucket timed (after its first) before their time replaces the fit's
STALE_AFTER = 512  # timed steps of other buckets after which a bucket's time is tried again (it may have changed)
# A bucket without a (fresh) time is tried when its predicted time is within this much of the limit: the prediction
# (the fit, scaled as the nearest measured bucket's) misses fixed costs of either sign, and a few steps settle it.
_TRY_UNMEASURED = 1.25
_WEIGHT = 0.25  # of the newest step in a bucket's running mean: a few steps follow a change, one outlier does not


class MeasuredSteps:
    """The GPU time of the steps the engine ran, by kind ("decode", "mixed") and graph bucket: a running mean each
    (exponentially weighted) of every step but a bucket's first (its first replay while serving: cold caches),
    trusted once MEASURED_AFTER steps are in it, until STALE_AFTER steps of other buckets have passed without one."""

    def __init__(self) -> None:
        self.mean_ms: dict[tuple[str, int], float] = {}
        self.count: dict[tuple[str, int], int] = {}  # steps timed, the first included
        self.last: dict[tuple[str, int], int] = {}  # `steps` at the bucket's last one
        self.steps = 0

    def add(self, key: tuple[str, int], ms: float) -> None:
        self.steps += 1
        n = self.count.get(key, 0) + 1
        self.count[key] = n
        self.last[key] = self.steps
        if n == 1:
            return
        mean = self.mean_ms.get(key)
        self.mean_ms[key] = ms if mean is None else mean + (ms - mean) * max(_WEIGHT, 1.0 / (n - 1))

    def trusted(self, key: tuple[str, int]) -> bool:
        """Measured enough, fresh or not (a stale time still says how far the fit is off)."""
        return self.count.get(key, 0) > MEASURED_AFTER

    def get(self, key: tuple[str, int]) -> float | None:
        """The bucket's time, if trusted and fresh."""
        if not self.trusted(key) or self.steps - self.last[key] > STALE_AFTER:
            return None
        return self.mean_ms[key]


@dataclass
class PrefillBound:
    ratio: float  # the longest step with prefill, in decode steps of the same rows
    fixed_tokens: float  # a step's fixed cost in tokens' worth of per-token cost (fixed / per_token)
    bucket: int = 0  # token multiple the mixed-step graphs are captured at (0: none)
    # The start-up fit in milliseconds and the graphs' buckets, for measured steps to correct the bound (set by
    # measure_bound; without them the fit alone decides).
    fixed_ms: float = 0.0
    per_token_ms: float = 0.0
    mixed_buckets: tuple[int, ...] = ()
    decode_buckets: tuple[int, ...] = ()
    measured: MeasuredSteps = field(default_factory=MeasuredSteps)
    # measured / fit of each trusted bucket, by kind: how far the idle-step fit is off for real steps
    _scales: dict[str, dict[int, float]] = field(default_factory=lambda: {"decode": {}, "mixed": {}})

    def prefill_tokens(self, num_decode: int) -> int:
        """The most prompt tokens a step with `num_decode` decode rows may prefill. The floor (MIN_PREFILL_TOKENS)
        keeps prompts moving even where it takes the step into a bucket over the limit."""
        if self._scales["mixed"] and self._scales["decode"]:
            return max(MIN_PREFILL_TOKENS, self._measured_tokens(num_decode))
        allowed = int((self.ratio - 1.0) * (self.fixed_tokens + num_decode))
        if self.bucket:
            # A step runs as its graph bucket's size, so its total goes to the nearest bucket: rounding always
            # down could halve a 7B step's prefill (a 411-token step cut to 256) and double the prompts' wait.
            total = num_decode + allowed
            rounded = max(1, round(total / self.bucket)) * self.bucket - num_decode
            if rounded >= MIN_PREFILL_TOKENS:
                allowed = rounded
        return max(MIN_PREFILL_TOKENS, allowed)

    def _fit_ms(self, tokens: int) -> float:
        return self.fixed_ms + self.per_token_ms * tokens

    def _predicted_ms(self, kind: str, size: int) -> tuple[float, bool]:
        """(the bucket's time, measured?): its fresh measured time, else the fit scaled as the nearest other
        trusted bucket of its kind (its own stale scale only where it is the one measured)."""
        ms = self.measured.get((kind, size))
        if ms is not None:
            return ms, True
        scales = self._scales[kind]
        others = [other for other in scales if other != size] or list(scales)
        nearest = min(others, key=lambda other: (abs(other - size), -other))
        return self._fit_ms(size) * scales[nearest], False

    def _measured_tokens(self, num_decode: int) -> int:
        """The largest mixed bucket (above the decode rows) whose time keeps within `ratio` decode steps, less the
        decode rows. Buckets are taken in order and the first one over the limit ends the search: a step's time
        grows with its tokens. Past what is measured the search climbs one bucket at a time (two unmeasured
        buckets in a row end it), and a bucket over the limit is tried again once its time is stale."""
        limit = self.ratio * self._predicted_ms("decode", self._decode_bucket(num_decode))[0]
        allowed = 0
        climbing = False  # the bucket last accepted has no fresh time
        for tokens in self.mixed_buckets:
            if tokens <= num_decode:
                continue
            ms, measured = self._predicted_ms("mixed", tokens)
            if ms > (limit if measured else limit * _TRY_UNMEASURED) or (climbing and not measured):
                break
            allowed, climbing = tokens - num_decode, not measured
        return allowed

    def _decode_bucket(self, rows: int) -> int:
        buckets = self.decode_buckets
        i = bisect_left(buckets, rows)
        return buckets[i] if i < len(buckets) else rows

    def observe(self, kind: str, size: int, ms: float) -> None:
        """A step's GPU time (swiftops.engines.pt.step_clock): a decode step ("decode", its batch bucket) or a step
        that prefilled beside decode rows ("mixed", its token bucket), replayed from a graph."""
        if not (self.mixed_buckets and self.per_token_ms):
            return
        key = (kind, size)
        self.measured.add(key, ms)
        if not self.measured.trusted(key):
            return
        first = size not in self._scales[kind]
        self._scales[kind][size] = self.measured.mean_ms[key] / self._fit_ms(size)
        if first and kind == "mixed":
            logger.info(
                "pt engine: measured steps of %d tokens: %.2f ms (start-up fit %.2f ms)",
                size,
                self.measured.mean_ms[key],
                self._fit_ms(size),
            )


def _replay_ms(graph: Any, repeats: int = 5) -> float:
    """The fastest of a few replays (the least disturbed by anything else on the GPU)."""
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def measure_bound(mixed: Any, ratio: float, bucket: int, decode_buckets: list[int]) -> PrefillBound | None:
    """Time idle steps (no sequences: every token writes the scratch block, attention exits) of the smallest and
    the largest mixed-step graph and fit the step time's line; None when the line is not usable. `decode_buckets`:
    the decode graphs' batch sizes, by which measured decode steps are kept."""
    small, large = min(mixed.graphs), max(mixed.graphs)
    if large <= small:
        return None
    try:
        for tokens in (small, large):
            mixed.idle(tokens)
            _replay_ms(mixed.graphs[tokens][0], repeats=1)  # first replay after capture: caches, clocks
        t_small = _replay_ms(mixed.graphs[small][0])
        t_large = _replay_ms(mixed.graphs[large][0])
    except Exception as exc:  # a timing that fails costs the bound, never the engine's start
        logger.warning("pt engine: steps not timed (%s: %s); prefill keeps the token budget", type(exc).__name__, exc)
        return None
    per_token = (t_large - t_small) / (large - small)
    fixed = t_small - per_token * small
    if per_token <= 0 or fixed <= 0:
        logger.info("pt engine: step times %.2f / %.2f ms give no prefill bound", t_small, t_large)
        return None
    bound = PrefillBound(
        ratio,
        fixed / per_token,
        bucket,
        fixed_ms=fixed,
        per_token_ms=per_token,
        mixed_buckets=tuple(mixed.buckets),
        decode_buckets=tuple(decode_buckets),
    )
    logger.info(
        "pt engine: a step costs %.2f ms + %.2f us per token; beside decoding sequences a step prefills at most "
        "%d tokens (32 decoding) to %d (256 decoding)",
        fixed,
        per_token * 1000,
        bound.prefill_tokens(32),
        bound.prefill_tokens(256),
    )
    return bound
