"""What one step costs the GPU, by its shape: P fresh prompts of L tokens beside D decode rows at context C.

    python -m benchmarks.mixed_step_profile --shape 0.5b --out mixed.json

Issue 16's inter-token line: served at 128 clients, a step that prefills beside decode rows took 2.6x a decode
step while the server's prefill bound (swiftops/engines/pt/step_budget.py) sized it for 1.75x from a start-up fit
of idle steps. This builds the engine as the server does (`max_itl_ratio` 1.75), then, on its own runner and
block table, times steps it builds itself (no scheduler, no other thread):

- `idle`: every mixed-step graph bucket replayed with no sequences (what the start-up fit sees), so the fit's
  line can be checked against every bucket, not only its two ends;
- `steps`: each shape of `--shapes` (`PxL+D`: P prompts of L tokens and D decode rows; `+D` alone is a decode
  step), through the runner as the engine calls it (`prefill` with its decode tail, or `decode`), host time to
  return and GPU time between CUDA events, median of `--repeats`; the same mixed shapes with the graphs off;
- `kernels`: torch.profiler's CUDA kernel totals of the `--profile` shapes, by kernel name.

The steps write KV entries of their own sequences only; no request is running. A diagnosis, not a headline.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

import torch

DEFAULT_SHAPES = ",".join(
    [f"+{d}" for d in (64, 100, 128)]
    + [f"{p}x128+100" for p in range(0, 7)]
    + [f"{p}x128+128" for p in (1, 2, 3, 4, 5)]
    + [f"1x{n}+100" for n in (256, 384, 512, 640, 768)]
)


def parse_shape(text: str) -> tuple[int, int, int]:
    """`PxL+D` -> (P, L, D); `+D` -> (0, 0, D)."""
    head, _, decode = text.partition("+")
    prompts, length = (int(v) for v in head.split("x")) if head else (0, 0)
    return prompts, length, int(decode or 0)


class StepBench:
    def __init__(self, engine: Any, context: int, seed: int = 0) -> None:
        self.runner = engine._core.runner
        self.blocks = self.runner.blocks
        self.device = self.runner.device
        self.context = context
        self.gen = torch.Generator().manual_seed(seed)
        self.vocab = int(engine._core.runner.model.config.get_text_config().vocab_size)

    def _seq(self, n: int) -> Any:
        from swiftops.engines.pt.sequence import SamplingParams, Sequence

        ids = torch.randint(0, self.vocab, (n,), generator=self.gen).tolist()
        return Sequence(prompt_ids=ids, params=SamplingParams(max_tokens=2), sink=lambda out: None)

    def build(self, prompts: int, length: int, decode: int) -> tuple[list[tuple[Any, int]], list[Any]]:
        """The step's items (prompt chunks, then one-token decode rows at `context`) with their blocks."""
        items: list[tuple[Any, int]] = []
        for _ in range(prompts):
            seq = self._seq(length)
            items.append((seq, length))
        rows = []
        for _ in range(decode):
            seq = self._seq(self.context - 1)
            seq.output_ids.append(1)
            seq.num_computed = self.context - 1  # its KV is what earlier steps wrote (content does not matter here)
            rows.append(seq)
        for seq, n in [*items, *((s, self.context) for s in rows)]:
            if not self.blocks.ensure_capacity(seq, n):
                raise SystemExit(f"the KV cache cannot hold shape {prompts}x{length}+{decode}")
        self.blocks.sync()
        return [*items, *((s, 1) for s in rows)], [s for s, _ in items] + rows

    def release(self, seqs: list[Any]) -> None:
        for seq in seqs:
            self.blocks.release(seq)

    def call(self, items: list[tuple[Any, int]], decode: int, prompts: int) -> Any:
        if prompts == 0:
            return self.runner.decode([s for s, _ in items])
        return self.runner.prefill(items, decode_tail=decode)

    def time(self, items: list[tuple[Any, int]], decode: int, prompts: int, repeats: int) -> dict[str, float]:
        cuda = self.device.type == "cuda"
        host, gpu = [], []
        for i in range(repeats + 2):  # two warm-up calls
            if cuda:
                torch.cuda.synchronize(self.device)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            self.call(items, decode, prompts)
            t1 = time.perf_counter()
            if cuda:
                end.record()
                end.synchronize()
            t2 = time.perf_counter()
            if i >= 2:
                host.append((t1 - t0) * 1e3)
                gpu.append(start.elapsed_time(end) if cuda else (t2 - t0) * 1e3)
        return {"host_ms": round(statistics.median(host), 3), "gpu_ms": round(statistics.median(gpu), 3)}


def idle_buckets(engine: Any, repeats: int) -> dict[str, float] | None:
    """Every mixed-step bucket replayed idle (the start-up fit's measurement) -> {bucket: ms}."""
    from swiftops.engines.pt.step_budget import _replay_ms

    mixed = engine._core.runner.mixed_graphs
    if mixed is None or not mixed.graphs:
        return None
    out = {}
    for tokens in mixed.buckets:
        mixed.idle(tokens)
        _replay_ms(mixed.graphs[tokens][0], repeats=1)
        out[str(tokens)] = round(_replay_ms(mixed.graphs[tokens][0], repeats=repeats), 4)
    return out


def kernel_table(bench: StepBench, shape: str, repeats: int, top: int = 14) -> list[dict[str, Any]]:
    """torch.profiler's CUDA kernels of `repeats` calls of one shape: name, calls per step, us per step."""
    from torch.profiler import ProfilerActivity, profile

    prompts, length, decode = parse_shape(shape)
    items, seqs = bench.build(prompts, length, decode)
    try:
        bench.time(items, decode, prompts, 2)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                bench.call(items, decode, prompts)
            torch.cuda.synchronize(bench.device)
    finally:
        bench.release(seqs)
    # As benchmarks/kernel_profile.py reads them: device time of each kernel's own key, host-side ops left out.
    totals: dict[str, list[float]] = {}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0) or 0
        if us <= 0 or event.key.startswith(("cuda", "aten::")):
            continue
        totals[event.key] = [event.count, us]
    rows = sorted(totals.items(), key=lambda kv: -kv[1][1])
    return [
        {"kernel": name[:120], "calls_per_step": round(calls / repeats, 1), "us_per_step": round(us / repeats, 1)}
        for name, (calls, us) in rows[:top]
    ] + [{"kernel": "(all)", "us_per_step": round(sum(v[1] for v in totals.values()) / repeats, 1)}]


def run(engine: Any, shapes: list[str], profile_shapes: list[str], context: int, repeats: int) -> dict[str, Any]:
    bench = StepBench(engine, context)
    runner = bench.runner
    bound = engine._core.scheduler.prefill_bound
    doc: dict[str, Any] = {
        "context": context,
        "prefill_bound": None if bound is None else {"ratio": bound.ratio, "fixed_tokens": round(bound.fixed_tokens, 1),
                                                     "bucket": bound.bucket},
        "steps": {},
    }
    with torch.inference_mode():
        doc["idle_buckets_ms"] = idle_buckets(engine, repeats)
        mixed = runner.mixed_graphs
        for shape in shapes:
            prompts, length, decode = parse_shape(shape)
            items, seqs = bench.build(prompts, length, decode)
            try:
                entry = bench.time(items, decode, prompts, repeats)
                if prompts and mixed is not None:
                    entry["bucket"] = next(b for b in mixed.buckets if b >= prompts * length + decode)
                    runner.mixed_graphs = None  # the same step eagerly
                    try:
                        eager = bench.time(items, decode, prompts, repeats)
                    finally:
                        runner.mixed_graphs = mixed
                    entry["eager_gpu_ms"], entry["eager_host_ms"] = eager["gpu_ms"], eager["host_ms"]
            finally:
                bench.release(seqs)
            doc["steps"][shape] = entry
            print(f"  {shape:>12}: {entry}", flush=True)
        if bench.device.type == "cuda":
            doc["kernels"] = {}
            for shape in profile_shapes:
                try:
                    doc["kernels"][shape] = kernel_table(bench, shape, 5)
                except Exception as exc:  # the profiler's failure costs its table, not the step timings
                    doc["kernels"][shape] = f"{type(exc).__name__}: {exc}"
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="0.5b", help="benchmarks.bench_model shape")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None, help="cpu: a smoke run")
    parser.add_argument("--model", default=None, help="a model directory instead of the bench shape")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated PxL+D (see the module doc)")
    parser.add_argument("--profile", default="+100,2x128+125,5x128+100", help="shapes whose kernels are listed")
    parser.add_argument("--context", type=int, default=256, help="the decode rows' context length")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--max_itl_ratio", type=float, default=1.75, help="the server's default prefill bound")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from swiftops.engines.factory import build_engine
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

    model = args.model
    if model is None:
        from benchmarks.serving import _model

        model_dir = pathlib.Path(__file__).resolve().parent.parent / ".bench-models"  # where benchmarks.serving builds it
        model = _model(argparse.Namespace(shape=args.shape, dtype=args.dtype, device=args.device,
                                          model_dir=str(model_dir)))[0]
    t0 = time.perf_counter()
    engine = build_engine(ModelSettings(model=model), EngineSettings(infer_backend="pt",
                                                                     max_itl_ratio=args.max_itl_ratio),
                          GenerationSettings())
    try:
        doc: dict[str, Any] = {"command": " ".join(sys.argv), "model": model,
                               "startup_s": round(time.perf_counter() - t0, 1), "python": platform.python_version(),
                               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                               "torch": torch.__version__}
        doc.update(run(engine, [s for s in args.shapes.split(",") if s],
                       [s for s in args.profile.split(",") if s], args.context, args.repeats))
    finally:
        engine.close()
    text = json.dumps(doc, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(json.dumps({k: doc[k] for k in ("prefill_bound", "idle_buckets_ms")}, indent=1))


if __name__ == "__main__":
    main()
