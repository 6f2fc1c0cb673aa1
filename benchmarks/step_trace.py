"""Where a pt-engine run's wall time goes, step by step: a timeline of the runner's launches.

`StepTrace(engine)` wraps the engine's model runner (`run` for mixed prefill steps, `decode` for decode steps,
pipelined or not) and records the host time at which each step is launched, with its shape. A step's duration is
the time to the next launch: the engine launches step N + 1 only once it has handled step N (or, pipelined, once
it has handled N - 1 while N runs), so launch-to-launch intervals are the pace the GPU and the host together
keep, without a synchronisation that would change it. `summary()` groups the steps by kind and by prefill size.

With `phases=True` it also splits each step's interval (launch to next launch) into the engine thread's host
phases that fall in it (`launch`: staging the step and queuing its kernels and sampling, of which `stage` is the
runner's part; `post`: handing over the previous step's tokens; `flush`: outputs to their requests; `plan`:
admitting arrivals (`admit`, part of it) and scheduling the next step; the rest is waiting for the GPU), and on
a GPU times each launched step's kernels with CUDA events (`gpu_ms`) and the GPU's idle time before it
(`gpu_idle_before_ms`: the host was late). It tells a step that waits on the host from one that waits on the
GPU. Off by default: the events cost a few microseconds a step.

Benchmark-only instrumentation: it wraps the runner's and the engine core's methods on one engine object and
nothing else.
"""

from __future__ import annotations

import time
from typing import Any

# prefill tokens of a mixed step, by bucket upper bound
_BUCKETS = (128, 512, 1024, 2048, 4096, 8192, 1 << 30)


# Engine-core methods timed as phases. `admit` (new requests into the scheduler) runs inside `plan`, and the
# runner's `stage` (the step's inputs to the device, its kernels queued) inside `launch`: nested, not added.
_PHASES = {
    "_launch": "launch",
    "_append_sampled": "post",
    "_flush": "flush",
    "_next_plan": "plan",
    "_admit_arrivals": "admit",
}


class StepTrace:
    def __init__(self, engine: Any, phases: bool = False) -> None:
        self.runner = engine._core.runner
        self.events: list[tuple[str, float, int, int, int]] = []  # (kind, launched at, prefill tokens, seqs, decode)
        self.phases: list[dict[str, float]] = []  # per event: host seconds of each phase within its interval
        self.gpu: list[tuple[Any, Any] | None] = []  # per event: CUDA events around its launch
        self._run, self._decode = self.runner.run, self.runner.decode
        self._active = False
        if phases:
            self._wrap_phases(engine._core)

        def run(plan: Any, decode_tokens: Any = None) -> Any:
            if self._active and plan.prefill:
                tokens = sum(chunk for _, chunk in plan.prefill)
                kind = "mixed_pipelined" if decode_tokens is not None else "mixed"
                self._record((kind, time.perf_counter(), tokens, len(plan.prefill), len(plan.decode)))
            t0 = time.perf_counter()
            result = self._run(plan, decode_tokens)
            if self._active and self.phases:
                self.phases[-1]["stage"] = self.phases[-1].get("stage", 0.0) + time.perf_counter() - t0
            return result

        def decode(seqs: list[Any], tokens: Any = None) -> Any:
            if self._active:
                kind = "decode_pipelined" if tokens is not None else "decode"
                self._record((kind, time.perf_counter(), 0, 0, len(seqs)))
            return self._decode(seqs, tokens)

        self.runner.run, self.runner.decode = run, decode

    def _wrap_phases(self, core: Any) -> None:
        import torch

        timed = core.device.type == "cuda"
        for method, phase in _PHASES.items():
            original = getattr(core, method)

            def wrapped(*args: Any, _original: Any = original, _phase: str = phase, **kwargs: Any) -> Any:
                if not self._active:
                    return _original(*args, **kwargs)
                before = len(self.events)
                start = None
                if timed and _phase == "launch":
                    start = torch.cuda.Event(enable_timing=True)
                    start.record()
                t0 = time.perf_counter()
                result = _original(*args, **kwargs)
                spent = time.perf_counter() - t0
                if start is not None and len(self.events) > before:  # this launch ran a traced step
                    end = torch.cuda.Event(enable_timing=True)
                    end.record()
                    self.gpu[-1] = (start, end)
                if self.phases:
                    # a launch's time belongs to the step it launched; other phases to the interval they fall in
                    self.phases[-1][_phase] = self.phases[-1].get(_phase, 0.0) + spent
                return result

            setattr(core, method, wrapped)

    def _record(self, event: tuple[str, float, int, int, int]) -> None:
        self.events.append(event)
        self.phases.append({})
        self.gpu.append(None)

    def _phase_means(self, groups: dict[str, dict[str, Any]], kinds: list[str]) -> None:
        """Per group, the mean host ms of each phase in a step's interval, and its kernels' GPU ms and the GPU's idle
        ms before them (where timed)."""
        sums: dict[str, dict[str, float]] = {kind: {} for kind in groups}
        timed: dict[str, int] = {kind: 0 for kind in groups}
        last = next((pair for pair in reversed(self.gpu) if pair is not None), None)
        if last is not None:
            last[1].synchronize()
        previous_end = None
        for kind, phases, pair in zip(kinds, self.phases, self.gpu, strict=True):
            for phase, seconds in phases.items():
                sums[kind][phase] = sums[kind].get(phase, 0.0) + seconds * 1000
            if pair is None:
                previous_end = None
                continue
            start, end = pair
            timed[kind] += 1
            sums[kind]["gpu"] = sums[kind].get("gpu", 0.0) + start.elapsed_time(end)
            if previous_end is not None:
                idle = max(0.0, previous_end.elapsed_time(start))
                sums[kind]["gpu_idle_before"] = sums[kind].get("gpu_idle_before", 0.0) + idle
            previous_end = end
        for kind, group in groups.items():
            steps = group["steps"]
            names = [*_PHASES.values(), "stage"]
            group["host_ms"] = {phase: round(sums[kind].get(phase, 0.0) / steps, 3) for phase in names}
            if timed[kind]:
                group["gpu_ms"] = round(sums[kind].get("gpu", 0.0) / timed[kind], 3)
                group["gpu_idle_before_ms"] = round(sums[kind].get("gpu_idle_before", 0.0) / timed[kind], 3)

    def start(self) -> None:
        self.events.clear()
        self.phases.clear()
        self.gpu.clear()
        self._active = True
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        self._active = False
        return self.summary(time.perf_counter())

    def summary(self, end: float) -> dict[str, Any]:
        """Steps by kind: count, seconds, mean ms, and for mixed steps the prefill tokens per bucket."""
        groups: dict[str, dict[str, Any]] = {}
        kinds: list[str] = []  # each event's group
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
            kinds.append(kind)
        for group in groups.values():
            group["mean_ms"] = round(group["seconds"] / group["steps"] * 1000, 2)
            group["seconds"] = round(group["seconds"], 3)
        if any(self.phases):
            self._phase_means(groups, kinds)
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
