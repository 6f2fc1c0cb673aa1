"""Prefix caching: a shared system prompt and a multi-turn chat replay, pt with its prefix cache on (its default) and
off, and LMDeploy's PyTorch engine with its prefix caching on, on the same random-weight model and token ids.

    python -m benchmarks.prefix_cache --workload shared_small --out shared-small.json   # 0.5B shape
    python -m benchmarks.prefix_cache --workload shared_large --out shared-large.json   # 7B shape
    python -m benchmarks.prefix_cache --workload chat_small --out chat-small.json       # multi-turn replay, 0.5B

Workloads:
  shared_small / shared_large  256 requests: one 2,000-token system prompt + 128 tokens of their own each, 128
      output tokens (EOS ignored, greedy), all submitted at once. Qwen2.5-0.5B / -7B shapes, bf16.
  chat_small  64 conversations x 4 turns, replayed in lock step (every conversation's turn k is submitted once all
      turn k - 1 answers are in): a 1,000-token system prompt, 64-token user turns and the log's 128-token
      answers, so turn k's prompt is turn k - 1's prompt, its logged answer and a new user turn; 128 output tokens.
  shared_cpu  a smoke run on CPU (~30M model, float32): 16 requests, 256 shared + 32 own tokens, 16 output tokens.

Engines, each in its own process one after another: `pt` (PtEngine(path, torch_dtype) at its defaults: prefix
caching on), `pt_nocache` (enable_prefix_caching=False), `lmdeploy` (AsyncEngine on the PyTorch backend,
PytorchEngineConfig(max_batch_size=256, dtype, enable_prefix_caching=True)), and only with --engines
`lmdeploy_nocache` (the same, caching off: LMDeploy's own on/off ratio). Every request streams, as a chat
server's do: TTFT is the time from submitting the phase to a request's first output; throughput is the completion
tokens produced (checked) over the phase's wall time. A warm-up on another system prompt runs first (it shares
nothing with the timed prompts). The JSON holds every engine's figures, TTFT percentiles, the pt engine's
prefix-cache counters and step timeline (benchmarks/step_trace.py), the ratios pt / pt_nocache and pt / lmdeploy, and is rewritten after every engine.
Models are built once under --model_dir (the same ones benchmarks/throughput.py uses) and reused.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pathlib
import shlex
import signal
import sys
import tempfile
import time
from typing import Any, Optional

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    shape: str
    dtype: str
    conversations: int  # requests per phase
    system_len: int
    user_len: int  # each request's own tokens (a user turn)
    output_len: int
    turns: int = 1  # > 1: a multi-turn replay, one phase per turn
    answer_len: int = 128  # the logged answer put back into the next turn's prompt
    engines: tuple[str, ...] = ("pt", "pt_nocache", "lmdeploy")
    # run only when --engines names them: LMDeploy's own caching on/off ratio on the same workload
    on_request: tuple[str, ...] = ("lmdeploy_nocache",)
    device: str = "cuda"
    engine_timeout_s: int = 240


WORKLOADS = {
    "shared_small": Workload("shared_small", "0.5b", "bfloat16", 256, 2000, 128, 128),
    "shared_large": Workload("shared_large", "7b", "bfloat16", 256, 2000, 128, 128),
    "chat_small": Workload("chat_small", "0.5b", "bfloat16", 64, 1000, 64, 128, turns=4),
    "shared_cpu": Workload("shared_cpu", "30m", "float32", 16, 256, 32, 16, engines=("pt", "pt_nocache"), on_request=(),
                           device="cpu"),
}
ENGINE_KWARGS = {"pt": {}, "pt_nocache": {"enable_prefix_caching": False}}
# The "Done when" lines these workloads decide: (ratio, minimum, what it stands for).
CRITERIA = [("pt/pt_nocache", 3.0, "shared prefix: throughput with caching >= 3x without it"),
            ("pt/lmdeploy", 1.0, "shared prefix: >= 1.0x LMDeploy with its prefix caching on")]


def build_phases(work: Workload, vocab: int, seed: int = 0) -> list[list[list[int]]]:
    """Token ids of each phase's requests: [phase][request] -> ids. Seeded, so every engine gets the same."""
    import random
    rng = random.Random(seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(10, vocab - 10) for _ in range(n)]

    system = tokens(work.system_len)
    histories = [list(system) for _ in range(work.conversations)]
    phases = []
    for turn in range(work.turns):
        if turn:  # the previous turn's logged answer, then the new user turn
            for history in histories:
                history += tokens(work.answer_len)
        for history in histories:
            history += tokens(work.user_len)
        phases.append([list(h) for h in histories])
    return phases


def write_prompt_file(work: Workload, model: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    vocab = int(json.loads((model / "config.json").read_text())["vocab_size"])
    phases = build_phases(work, vocab, seed=0)
    warmup_work = dataclasses.replace(work, conversations=4, turns=1)
    warmup = build_phases(warmup_work, vocab, seed=1)[0]  # another system prompt: nothing in common
    out.write_text(json.dumps({"phases": phases, "output_len": work.output_len, "warmup": warmup,
                               "warmup_output_len": 16}))
    lengths = [len(p) for phase in phases for p in phase]
    return {"phases": len(phases), "requests_per_phase": work.conversations, "prompt_tokens_min": min(lengths),
            "prompt_tokens_max": max(lengths), "shared_system_tokens": work.system_len, "vocab_size": vocab}


# ---- the engine processes ------------------------------------------------------------------------------------
def _phase_figures(name: str, results: list[tuple[Optional[float], int]], expected: int, seconds: float
                   ) -> dict[str, Any]:
    from benchmarks.run_record import run_figures
    figures = run_figures(name, len(results), expected, sum(n for _, n in results), seconds)
    ttfts = sorted(t for t, _ in results if t is not None)
    if ttfts:
        def pick(q: float) -> float:
            return round(ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1000, 1)
        figures.update(ttft_ms_mean=round(sum(ttfts) / len(ttfts) * 1000, 1), ttft_ms_p50=pick(0.5),
                       ttft_ms_p90=pick(0.9), ttft_ms_p99=pick(0.99))
    return figures


async def _phases(prompts: dict[str, Any], record: Any, one: Any, warmed: Any = None) -> None:
    """Warm-up, then each phase: every request submitted at once, streamed; `one(ids, out_len, t0)` returns
    (seconds from t0 to the first output, completion tokens). `warmed()` runs between the two."""
    from benchmarks.run_record import sync
    t0 = time.perf_counter()
    await asyncio.gather(*(one(p, prompts["warmup_output_len"], t0) for p in prompts["warmup"]))
    record.set(warmup_s=round(time.perf_counter() - t0, 2))
    if warmed is not None:
        warmed()
    out_len = int(prompts["output_len"])
    total_tokens, total_s = 0, 0.0
    for i, phase in enumerate(prompts["phases"]):
        name = f"turn{i + 1}" if len(prompts["phases"]) > 1 else "main"
        sync()
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(p, out_len, t0) for p in phase))
        sync()
        seconds = time.perf_counter() - t0
        record.data["runs"][name] = _phase_figures(name, results, len(phase) * out_len, seconds)
        total_tokens += record.data["runs"][name]["completion_tokens"]
        total_s += seconds
        record.save()
    if len(prompts["phases"]) > 1:
        record.set(all_turns={"completion_tokens": total_tokens, "seconds": round(total_s, 3),
                              "tok_s": round(total_tokens / total_s, 2)})


def run_pt(args: argparse.Namespace, prompts: dict[str, Any], record: Any) -> None:
    from swiftops import InferRequest, PtEngine, RequestConfig

    kwargs = dict(ENGINE_KWARGS[args.engine], **json.loads(args.engine_kwargs or "{}"), torch_dtype=args.dtype)
    record.set(engine_kwargs=kwargs)
    t0 = time.perf_counter()
    engine = PtEngine(args.model, **kwargs)
    record.set(startup_s=round(time.perf_counter() - t0, 2),
               effective={"prefix_caching": engine.prefix_caching, "max_batch_size": engine.max_batch_size,
                          "runner_name": engine.runner_name, "uses_cuda_graphs": engine.cuda_graphs,
                          "max_model_len": engine.max_model_len})

    async def one(ids: list[int], out_len: int, t0: float) -> tuple[Optional[float], int]:
        config = RequestConfig(max_tokens=out_len, temperature=0, ignore_eos=True, stream=True)
        first, produced = None, 0
        async for chunk in await engine.infer_async(InferRequest(prompt=ids), config):
            if first is None:
                first = time.perf_counter() - t0
            if chunk.usage is not None:
                produced = chunk.usage.completion_tokens
        return first, produced

    from benchmarks.step_trace import StepTrace

    trace = StepTrace(engine)
    counts = []  # the prefix cache's (queried, hit) tokens after the warm-up and at the end: the timed phases'

    def warmed() -> None:
        counts.append(engine.prefix_cache_stats())
        trace.start()

    try:
        asyncio.run(_phases(prompts, record, one, warmed))
        record.set(step_trace=trace.stop())
        before, after = counts[0], engine.prefix_cache_stats()
        if before is not None and after is not None:
            queries, hits = after[0] - before[0], after[1] - before[1]
            record.set(prefix_cache={"queried_tokens": queries, "hit_tokens": hits,
                                     "hit_rate": round(hits / queries, 4) if queries else 0.0})
    finally:
        from benchmarks.run_record import memory_info
        record.set(memory=memory_info())
        engine.close()


def run_lmdeploy(args: argparse.Namespace, prompts: dict[str, Any], record: Any) -> None:
    import itertools
    import logging

    import lmdeploy
    from lmdeploy.serve.core.async_engine import AsyncEngine

    logging.getLogger("lmdeploy").setLevel(logging.WARNING)
    config_kwargs = {"max_batch_size": 256, "dtype": args.dtype,
                     "enable_prefix_caching": args.engine == "lmdeploy"}
    record.set(lmdeploy=lmdeploy.__version__, engine_config_kwargs=config_kwargs, api="AsyncEngine")
    t0 = time.perf_counter()
    engine = AsyncEngine(args.model, backend="pytorch", backend_config=lmdeploy.PytorchEngineConfig(**config_kwargs))
    sessions = itertools.count(1)

    async def one(ids: list[int], out_len: int, t0: float) -> tuple[Optional[float], int]:
        gen = lmdeploy.GenerationConfig(max_new_tokens=out_len, ignore_eos=True, do_sample=False)
        request = await engine.preprocess(None, next(sessions), gen_config=gen, input_ids=list(ids),
                                          do_preprocess=False)
        first, last = None, None
        async for out in engine.generate(request, stream_response=True):
            if first is None:
                first = time.perf_counter() - t0
            last = out
        if last is None or last.finish_reason not in ("length", "stop"):
            raise RuntimeError(f"LMDeploy ended a request with {getattr(last, 'finish_reason', None)!r}")
        return first, int(last.generate_token_len)

    async def body() -> None:
        engine.start_loop(asyncio.get_running_loop(), use_async_api=True)
        config = engine.backend_config
        record.set(startup_s=round(time.perf_counter() - t0, 2),
                   effective={"enable_prefix_caching": getattr(config, "enable_prefix_caching", None),
                              "max_batch_size": getattr(config, "max_batch_size", None),
                              "session_len": int(engine.session_len)})
        await _phases(prompts, record, one)

    try:
        asyncio.run(body())
    finally:
        from benchmarks.run_record import memory_info
        record.set(memory=memory_info())
        engine.close()


def child(args: argparse.Namespace) -> int:
    import logging

    from benchmarks.run_record import RunRecord, WarningLog, device_info, load_prompts
    logging.basicConfig(level=logging.WARNING)
    warnings = WarningLog()
    logging.getLogger().addHandler(warnings)
    record = RunRecord(args.out, args.engine, **device_info())
    work = run_lmdeploy if args.engine.startswith("lmdeploy") else run_pt
    return record.capture(lambda: work(args, load_prompts(args.prompts), record), warnings)


# ---- the parent ----------------------------------------------------------------------------------------------
def ratios(engines: dict[str, dict[str, Any]]) -> dict[str, float]:
    def tok_s(label: str) -> Optional[float]:
        rec = engines.get(label) or {}
        if not rec.get("ok"):
            return None
        return (rec.get("all_turns") or {}).get("tok_s") or ((rec.get("runs") or {}).get("main") or {}).get("tok_s")

    found = {}
    for a, b in (("pt", "pt_nocache"), ("pt", "lmdeploy"), ("lmdeploy", "lmdeploy_nocache")):
        x, y = tok_s(a), tok_s(b)
        if x and y:
            found[f"{a}/{b}"] = round(x / y, 3)
    return found


def build_model(work: Workload, model_dir: pathlib.Path, timeout: float) -> pathlib.Path:
    from benchmarks.bench_model import is_built
    from benchmarks.throughput import run_child
    path = model_dir.resolve() / f"qwen2-{work.shape}-{work.dtype}"  # the name benchmarks/throughput.py uses
    if is_built(path, work.shape, work.dtype):
        return path
    cmd = [sys.executable, "-m", "benchmarks.bench_model", "--shape", work.shape, "--out", str(path),
           "--dtype", work.dtype] + (["--device", "cpu"] if work.device == "cpu" else [])
    result = run_child(cmd, timeout, f"{work.name}/model")
    if result["returncode"] != 0 or not is_built(path, work.shape, work.dtype):
        raise RuntimeError(f"building the {work.shape} model failed: {result}")
    return path


def run_workload(work: Workload, args: argparse.Namespace, doc: dict[str, Any], save: Any, t_start: float) -> None:
    from benchmarks.throughput import run_child
    entry: dict[str, Any] = {"spec": dataclasses.asdict(work), "engines": {}}
    doc["workloads"][work.name] = entry
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="swiftops-prefix-bench-"))
    remaining = (lambda: args.deadline_s - (time.monotonic() - t_start)) if args.deadline_s else (lambda: 1e9)
    try:
        model = build_model(work, pathlib.Path(args.model_dir), min(600.0, remaining()))
        prompts_file = tmp / "prompts.json"
        entry["prompts"] = write_prompt_file(work, model, prompts_file)
    except Exception as exc:  # noqa: BLE001 - recorded; the next workload still runs
        entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        save()
        return
    save()
    wanted = set(args.engines.split(",")) if args.engines else None
    labels = work.engines if wanted is None else [e for e in work.engines + work.on_request if e in wanted]
    for label in labels:
        if remaining() < 30:
            entry["engines"][label] = {"ok": False, "skipped": f"not started: {remaining():.0f} s left"}
            continue
        out = tmp / f"{label}.json"
        cmd = [sys.executable, "-m", "benchmarks.prefix_cache", "--child", label, "--model", str(model),
               "--prompts", str(prompts_file), "--out", str(out), "--dtype", work.dtype]
        if args.pt_kwargs and not label.startswith("lmdeploy"):
            cmd += ["--engine_kwargs", args.pt_kwargs]
        timeout = min(float(args.engine_timeout_s or work.engine_timeout_s), remaining() - 5)
        result = run_child(cmd, timeout, f"{work.name}/{label}")
        try:
            record = json.loads(out.read_text())
        except (OSError, ValueError) as exc:
            record = {"ok": False, "error": f"the engine process left no readable JSON ({exc})"}
        record.update(result, command=shlex.join(cmd))
        if result["timed_out"] or result["returncode"] != 0:
            record["ok"] = False
        entry["engines"][label] = record
        entry["ratios"] = ratios(entry["engines"])
        if work.turns == 1:
            entry["criteria"] = [{"criterion": text, "ratio": key, "measured": entry["ratios"].get(key),
                                  "minimum": minimum, "holds": None if key not in entry["ratios"]
                                  else entry["ratios"][key] >= minimum} for key, minimum, text in CRITERIA]
        save()


def print_table(doc: dict[str, Any]) -> None:
    for name, entry in doc["workloads"].items():
        print(f"\n{name}: {entry.get('error') or ''}")
        for label, rec in entry.get("engines", {}).items():
            runs = rec.get("runs") or {}
            figures = "  ".join(f"{k}: {v.get('tok_s')} tok/s ttft p50 {v.get('ttft_ms_p50')} ms "
                                f"p90 {v.get('ttft_ms_p90')} ms" for k, v in runs.items())
            error = rec.get("skipped") or rec.get("error") or (rec.get("errors") or [{}])[-1].get("error")
            print(f"  {label:11s} ok={rec.get('ok')!s:5s} {figures}  cache={rec.get('prefix_cache')}"
                  + (f"  ERROR {error}" if error and not rec.get("ok") else ""))
        for key, value in (entry.get("ratios") or {}).items():
            print(f"  ratio {key}: {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--out", default=None, help="JSON file, rewritten after every engine")
    parser.add_argument("--model_dir", default=str(REPO / ".bench-models"))
    parser.add_argument("--engines", default=None,
                        help="only these, comma-separated (pt,pt_nocache,lmdeploy,lmdeploy_nocache)")
    parser.add_argument("--deadline_s", type=float, default=None, help="start no engine after this many seconds")
    parser.add_argument("--engine_timeout_s", type=float, default=None)
    parser.add_argument("--pt_kwargs", default=None, help="JSON merged into the pt engines' keyword arguments")
    # the engine processes
    parser.add_argument("--child", dest="engine", choices=["pt", "pt_nocache", "lmdeploy", "lmdeploy_nocache"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--engine_kwargs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        from benchmarks.run_record import exit_with
        exit_with(lambda: child(args))
    if not args.workload:
        parser.error("give at least one --workload")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # an outer timeout: save what finished
    from benchmarks.throughput import host_info
    doc: dict[str, Any] = {"command": shlex.join([sys.executable] + sys.argv), "host": host_info(), "workloads": {},
                           "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def save() -> None:
        if args.out:
            out = pathlib.Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(doc, indent=2, default=str))

    t_start = time.monotonic()
    try:
        for name in args.workload:
            run_workload(WORKLOADS[name], args, doc, save, t_start)
    finally:
        doc["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save()
    print_table(doc)


if __name__ == "__main__":
    main()
