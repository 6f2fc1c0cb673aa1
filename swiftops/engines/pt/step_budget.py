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

On by default where streams are served (`swiftops deploy`, `swiftops app`: SERVING_ITL_RATIO), off for the Python
API, whose callers want throughput; `--max_itl_ratio` sets it (swiftops.protocol.settings). Measured on an H100
at 128 clients (benchmarks/RESULTS.md, ninth session): on the 7B shape the bound took the inter-token latency's
p99 / p50 from 6.4 to 1.49 for 3.7% of served throughput (TTFT p99 449 -> 886 ms); on the 0.5B shape, where the
server process and not the GPU sets the pace, it changed nothing (3.85 -> 3.70, throughput +1.9%).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

MIN_PREFILL_TOKENS = 64  # a step that decodes still prefills this much: new prompts always make progress
SERVING_ITL_RATIO = 1.75  # the server's default (see above); the Python API's is 0 (off)


@dataclass(frozen=True)
class PrefillBound:
    ratio: float  # the longest step with prefill, in decode steps of the same rows
    fixed_tokens: float  # a step's fixed cost in tokens' worth of per-token cost (fixed / per_token)
    bucket: int = 0  # token multiple the mixed-step graphs are captured at (0: none)

    def prefill_tokens(self, num_decode: int) -> int:
        """The most prompt tokens a step with `num_decode` decode rows may prefill."""
        allowed = int((self.ratio - 1.0) * (self.fixed_tokens + num_decode))
        if self.bucket:
            # A step runs as its graph bucket's size, so its total goes to the nearest bucket: rounding always
            # down could halve a 7B step's prefill (a 411-token step cut to 256) and double the prompts' wait.
            total = num_decode + allowed
            rounded = max(1, round(total / self.bucket)) * self.bucket - num_decode
            if rounded >= MIN_PREFILL_TOKENS:
                allowed = rounded
        return max(MIN_PREFILL_TOKENS, allowed)


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


def measure_bound(mixed: Any, ratio: float, bucket: int) -> PrefillBound | None:
    """Time idle steps (no sequences: every token writes the scratch block, attention exits) of the smallest and
    the largest mixed-step graph and fit the step time's line; None when the line is not usable."""
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
    bound = PrefillBound(ratio, fixed / per_token, bucket)
    logger.info(
        "pt engine: a step costs %.2f ms + %.2f us per token; beside decoding sequences a step prefills at most "
        "%d tokens (32 decoding) to %d (256 decoding)",
        fixed,
        per_token * 1000,
        bound.prefill_tokens(32),
        bound.prefill_tokens(256),
    )
    return bound
