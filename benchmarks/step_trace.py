"""Where a pt-engine run's wall time goes, step by step: a timeline of the runner's launches.

`StepTrace(engine)` wraps the engine's model runner (`run` for mixed prefill steps, `decode` for decode steps,
pipelined or not) and records the host time at which each step is launched, with its shape. A step's duration is
the time to the next launch: the engine launches step N + 1 only once it has handled step N (or, pipelined, once
it has handled N - 1 while N runs), so launch-to-launch intervals are the pace the GPU and the host together
keep, without a synchronisation that would change it. `summary()` groups the steps by kind and by prefill size.

Benchmark-only instrumentation: it wraps the runner's methods on one engine object and nothing else.
"""

from __future__ import annotations

import time
from typing import Any

# prefill tokens of a mixed step, by bucket upper bound
_BUCKETS = (128, 512, 1024, 2048, 4096, 8192, 1 << 30)


class StepTrace:
    def __init__(self, engine: Any) -> None:
        self.runner = engine._core.runner
        self.events: list[tuple[str, float, int, int, int]] = []  # (kind, launched at, prefill tokens, seqs, decode)
        self._run, self._decode = self.runner.run, self.runner.decode
        self._active = False

        def run(plan: Any, decode_tokens: Any = None) -> Any:
            if self._active and plan.prefill:
                tokens = sum(chunk for _, chunk in plan.prefill)
                kind = "mixed_pipelined" if decode_tokens is not None else "mixed"
                self.events.append((kind, time.perf_counter(), tokens, len(plan.prefill), len(plan.decode)))
            return self._run(plan, decode_tokens)

        def decode(seqs: list[Any], tokens: Any = None) -> Any:
            if self._active:
                kind = "decode_pipelined" if tokens is not None else "decode"
                self.events.append((kind, time.perf_counter(), 0, 0, len(seqs)))
            return self._decode(seqs, tokens)

        self.runner.run, self.runner.decode = run, decode

    def start(self) -> None:
        self.events.clear()
        self._active = True
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        self._active = False
        return self.summary(time.perf_counter())

    def summary(self, end: float) -> dict[str, Any]:
        """Steps by kind: count, seconds, mean ms, and for mixed steps the prefill tokens per bucket."""
        groups: dict[str, dict[str, Any]] = {}
        launches = [e[1] for e in self.events] + [end]
        for (kind, at, tokens, _, decoding), following in zip(self.events, launches[1:], strict=True):
            seconds = following - at
            if kind.startswith("mixed"):
                bound = next(b for b in _BUCKETS if tokens <= b)
                kind += f"<={bound}" if bound < _BUCKETS[-1] else f">{_BUCKETS[-2]}"
            group = groups.setdefault(kind, {"steps": 0, "seconds": 0.0, "prefill_tokens": 0, "decode_rows": 0})
            group["steps"] += 1
            group["seconds"] += seconds
            group["prefill_tokens"] += tokens
            group["decode_rows"] += decoding
        for group in groups.values():
            group["mean_ms"] = round(group["seconds"] / group["steps"] * 1000, 2)
            group["seconds"] = round(group["seconds"], 3)
        # A decode row gets a token per step: the steps' durations, each counted once per row it carries, are the
        # inter-token gaps the engine itself makes (what a server can at best pass on).
        gaps = sorted((following - at, decoding) for (_, at, _, _, decoding), following
                      in zip(self.events, launches[1:], strict=True) if decoding)
        engine_itl: dict[str, float] = {}
        rows_total = sum(n for _, n in gaps)
        for q in (50, 90, 99):
            seen = 0
            for seconds, n in gaps:
                seen += n
                if seen >= rows_total * q / 100:
                    engine_itl[f"p{q}_ms"] = round(seconds * 1000, 2)
                    break
        first = self.events[0][1] if self.events else end
        mixed_graphs = getattr(self.runner, "mixed_graphs", None)
        return {
            "steps": len(self.events),
            # None: mixed steps run eagerly (off, or the start-up check refused the graphs); else graph replays so far
            "mixed_graph_replays": None if mixed_graphs is None else mixed_graphs.replays,
            "before_first_step_s": round(first - self._t0, 3),
            "traced_s": round(end - first, 3),
            "engine_itl": engine_itl,
            "by_kind": dict(sorted(groups.items())),
        }
