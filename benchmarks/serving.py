"""Serving benchmark (issue 16): streaming clients against `swiftops deploy`, next to the same engine offline,
for the pt backend and for `--infer_backend lmdeploy` (the peer), in one command that writes one JSON.

    python -m benchmarks.serving --shape 0.5b --out $OUT/serving-05b.json            # GPU: ~6 min
    python -m benchmarks.serving --shape 7b --out $OUT/serving-7b.json               # GPU: ~8 min (model cached)
    python -m benchmarks.serving --shape 30m --device cpu --concurrency 4,8 --out s.json   # CPU smoke run
    python -m benchmarks.serving --url http://host:8000 --model NAME --vocab V --concurrency 32  # a running server

Workload: random token-id prompts of 128 tokens -> 256 output tokens (EOS ignored, greedy), `--requests_per_client`
requests per client. At each concurrency c, c clients start at once and each sends its next /v1/completions
stream when the previous one ends; TTFT, inter-token latency (ITL, between chunks carrying text) and end-to-end
latency percentiles, output tok/s. The clients run in several processes with a bare HTTP/1.1 reader, so the
load generator is not what limits the figures.

The offline figure of a backend is the same engine in-process at the same defaults (`build_engine` with the
same settings as the server), on the same prompts, in a process of its own (all GPU memory freed between
parts): "at c" = c workers each submitting its next request when the previous ends (`infer_async`, whole
answers); "all at once" = every prompt of the c=max set submitted together (`infer`). For LMDeploy also the
library driven directly (benchmarks.lmdeploy_peer, AsyncEngine) on those prompts, for the wrapper's ratio.

Parts (--parts, default all): pt_served, pt_offline, lmdeploy_served, lmdeploy_offline, lmdeploy_direct. The
JSON is rewritten after each part (a run cut short keeps what it measured), and an existing --out is merged
into, so parts can be spread over several commands.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# Every engine (served, offline, LMDeploy direct) first answers these many untimed requests of this many tokens.
WARMUP_REQUESTS, WARMUP_TOKENS = 32, 16
PARTS = ("pt_served", "pt_offline", "lmdeploy_served", "lmdeploy_offline", "lmdeploy_direct")
# Issue 16's "Done when" lines this benchmark decides: (backend, key, minimum or maximum, what it stands for).
CRITERIA = [
    ("pt", "served_over_offline_c32", ">=", 0.9, "served / offline throughput >= 0.9 at 32 clients"),
    ("pt", "served_over_offline_c128", ">=", 0.85, "served / offline throughput >= 0.85 at 128 clients"),
    ("pt", "ttft_p99_ms_c128", "<=", 1000.0, "128 clients: TTFT p99 <= 1 s"),
    ("pt", "itl_p99_over_p50_c128", "<=", 2.0, "128 clients: ITL p99 <= 2x p50"),
    ("lmdeploy", "offline_over_direct", ">=", 0.9, "swiftops[lmdeploy] offline >= 0.9x LMDeploy driven directly"),
]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round((len(values) - 1) * q / 100)))]


def _itl_histogram(url: str) -> dict[float, float]:
    """The server's cumulative inter-token-latency histogram from /metrics: {upper bound (s): count}."""
    import urllib.request

    try:
        text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10).read().decode()
    except OSError:
        return {}
    counts: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("swiftops_inter_token_latency_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            counts[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return counts


def _histogram_delta(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Gaps observed between two scrapes: how many, and the share above each bucket bound."""
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    if not total:
        return {"gaps": 0}
    return {"gaps": int(total), "share_above_ms": {f"{b * 1000:g}": round(1 - n / total, 5)
                                                   for b, n in delta.items() if b != float("inf")}}


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Seeded token ids in [10, vocab - 10) (no torch needed: the client side imports none)."""
    import random
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab - 10) for _ in range(length)] for _ in range(n)]


# ---- the load generator --------------------------------------------------------------------------------
async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    else:
        yield await reader.readexactly(int(headers.get("content-length", "0")))


async def _one_stream(conn: list[Any], host: str, port: int, body: bytes, record: dict[str, list[float]]) -> int:
    """One streamed request on the client's keep-alive connection (reopened if the server closed it)."""
    start = time.monotonic()
    if conn[0] is None:
        conn[0] = await asyncio.open_connection(host, port)
    reader, writer = conn[0]
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (host.encode(), len(body)) + body)
    await writer.drain()
    status, headers = await _read_head(reader)
    buffer = b""
    last: Optional[float] = None
    tokens = 0
    async for data in _body_chunks(reader, headers):
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:300]!r}")
        buffer += data
        *events, buffer = buffer.split(b"\n\n")
        now = time.monotonic()
        for event in events:
            if not event.startswith(b"data: {"):
                continue
            chunk = json.loads(event[6:])
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices")
            if choices and choices[0].get("text"):
                if last is None:
                    record["ttft"].append(now - start)
                else:
                    record["itl"].append(now - last)
                last = now
    if headers.get("connection", "").lower() == "close":
        writer.close()
        conn[0] = None
    record["e2e"].append(time.monotonic() - start)
    return tokens


async def _clients(host: str, port: int, model: str, work: list[list[list[int]]], out_len: int,
                   start_at: float) -> dict[str, Any]:
    record: dict[str, list[float]] = {"ttft": [], "itl": [], "e2e": []}
    produced = 0
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    first = time.monotonic()

    async def client(prompts: list[list[int]]) -> None:
        nonlocal produced
        conn: list[Any] = [None]
        for prompt in prompts:
            body = json.dumps({"model": model, "prompt": prompt, "max_tokens": out_len, "temperature": 0,
                               "ignore_eos": True, "stream": True,
                               "stream_options": {"include_usage": True}}).encode()
            tokens = await _one_stream(conn, host, port, body, record)
            produced += tokens
        if conn[0] is not None:
            conn[0][1].close()

    await asyncio.gather(*(client(p) for p in work))
    return {"record": record, "produced": produced, "first": first, "last": time.monotonic()}


def _client_process(args: tuple) -> dict[str, Any]:
    return asyncio.run(_clients(*args))


def sweep_point(url: str, model: str, prompts: list[list[int]], out_len: int, concurrency: int,
                processes: int) -> dict[str, Any]:
    """`concurrency` clients over `prompts` (each its share, in turn), spread over `processes` processes."""
    host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
    per_client = [prompts[i::concurrency] for i in range(concurrency)]
    processes = max(1, min(processes, concurrency))
    groups = [per_client[i::processes] for i in range(processes)]
    start_at = time.monotonic() + 2.0  # every process connects and waits: all clients start together
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(_client_process, [(host, int(port or 80), model, g, out_len, start_at) for g in groups])
    seconds = max(r["last"] for r in results) - min(r["first"] for r in results)
    merged: dict[str, list[float]] = {"ttft": [], "itl": [], "e2e": []}
    for r in results:
        for name, values in r["record"].items():
            merged[name] += values
    produced = sum(r["produced"] for r in results)
    point: dict[str, Any] = {"concurrency": concurrency, "requests": len(prompts), "completion_tokens": produced,
                             "expected_tokens": len(prompts) * out_len, "seconds": round(seconds, 3),
                             "output_tok_s": round(produced / seconds, 1), "client_processes": processes}
    for name, values in merged.items():
        point[f"{name}_p50_ms"] = round(_pct(values, 50) * 1000, 2)
        point[f"{name}_p99_ms"] = round(_pct(values, 99) * 1000, 2)
    point["chunks"] = len(merged["ttft"]) + len(merged["itl"])  # events with text (several tokens when behind)
    point["ok"] = produced == len(prompts) * out_len
    return point


# ---- the offline engine (a child process) ----------------------------------------------------------------
def offline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The same engine in-process at the server's settings: tok/s at each concurrency, and all at once."""
    from swiftops import InferRequest, RequestConfig
    from swiftops.engines.factory import build_engine
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

    t0 = time.perf_counter()
    engine = build_engine(ModelSettings(model=spec["model"], max_model_len=spec["max_model_len"]),
                          EngineSettings(infer_backend=spec["backend"], **spec.get("settings", {})),
                          GenerationSettings())
    out: dict[str, Any] = {"startup_s": round(time.perf_counter() - t0, 1), "at_concurrency": {}}
    if spec["backend"] == "lmdeploy":  # which LMDeploy engine ran, and whether token-id prompts used its instance
        out["lmdeploy_backend"] = engine.lmdeploy_backend
        out["token_ids_to_instance"] = engine._token_ids_to_instance
    config = RequestConfig(max_tokens=spec["output_len"], temperature=0, ignore_eos=True)
    try:
        engine.infer([InferRequest(prompt=p) for p in spec["warmup"]],
                     config.model_copy(update={"max_tokens": WARMUP_TOKENS}), use_tqdm=False)

        async def at_concurrency(prompts: list[list[int]], c: int) -> int:
            shares = [prompts[i::c] for i in range(c)]

            async def worker(share: list[list[int]]) -> int:
                done = 0
                for p in share:
                    done += (await engine.infer_async(InferRequest(prompt=p), config)).usage.completion_tokens
                return done
            return sum(await asyncio.gather(*(worker(s) for s in shares)))

        trace = None
        if spec["backend"] == "pt":  # the steps' timeline: how long steps with prefill take beside decode steps
            from benchmarks.step_trace import StepTrace
            trace = StepTrace(engine, phases=bool(spec.get("phases")))
        for c, prompts in spec["sets"].items():
            if trace is not None:
                trace.start()
            sampler = None
            if spec.get("profile") and spec["backend"] == "pt":  # where the engine thread's time goes, per point
                from benchmarks.thread_sampler import ThreadSampler
                sampler = ThreadSampler(engine._core._thread)
                sampler.start()
            t0 = time.perf_counter()
            produced = engine._loop().submit(at_concurrency(prompts, int(c))).result()
            seconds = time.perf_counter() - t0
            out["at_concurrency"][c] = {"requests": len(prompts), "completion_tokens": produced,
                                        "seconds": round(seconds, 3), "output_tok_s": round(produced / seconds, 1),
                                        "ok": produced == len(prompts) * spec["output_len"]}
            if trace is not None:
                out["at_concurrency"][c]["step_trace"] = trace.stop()
            if sampler is not None:
                out["at_concurrency"][c]["engine_thread_profile"] = sampler.stop()
        bound = engine._core.scheduler.prefill_bound if spec["backend"] == "pt" else None
        if bound is not None and bound.measured.count:  # the step times the bound kept to (--offline_settings)
            out["measured_steps_ms"] = {f"{kind} {size}": [round(ms, 3), bound.measured.count[(kind, size)]]
                                        for (kind, size), ms in sorted(bound.measured.mean_ms.items())}
        everything = spec["sets"][str(max(int(c) for c in spec["sets"]))]
        t0 = time.perf_counter()
        responses = engine.infer([InferRequest(prompt=p) for p in everything], config, use_tqdm=False)
        seconds = time.perf_counter() - t0
        produced = sum(r.usage.completion_tokens for r in responses)
        out["all_at_once"] = {"requests": len(everything), "completion_tokens": produced,
                              "seconds": round(seconds, 3), "output_tok_s": round(produced / seconds, 1)}
    finally:
        engine.close()
    return out


DEADLINE_KILL = -9  # what _run_child returns for a part it stopped at --deadline_s


def _run_child(cmd: list[str], timeout: float, log: pathlib.Path) -> int:
    with log.open("w") as f:
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[serving benchmark] stopped at --deadline_s after {timeout:.0f} s: give the run more time\n")
            return DEADLINE_KILL


# ---- the orchestration -------------------------------------------------------------------------------------
class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = pathlib.Path(args.out) if args.out else None
        self.doc: dict[str, Any] = {}
        if self.out is not None and self.out.exists():
            self.doc = json.loads(self.out.read_text())
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="serving-bench-"))
        self.start_clock()  # started again once the model is built
        self.warmup: list[list[int]] = []  # set once the model's vocabulary is known

    def save(self) -> None:
        self.doc["criteria"] = criteria(self.doc)
        text = json.dumps(self.doc, indent=2, default=str)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(text)

    def start_clock(self) -> None:
        """--deadline_s counts the parts, not the model's build (a 7B build takes about a minute on a fresh machine,
        and cut the last part short when it counted)."""
        self.deadline = time.monotonic() + self.args.deadline_s

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def served(self, backend: str, model_dir: str, sets: dict[str, list[list[int]]], max_len: int) -> dict[str, Any]:
        from tests.server_process import ServerProcess

        # engine defaults: no --max_model_len, batch or memory flag (the default --max_queue, 256, holds 128 clients)
        flags = ["--model", model_dir, "--infer_backend", backend]
        if max_len:
            flags += ["--max_model_len", str(max_len)]
        flags += shlex.split(self.args.server_flags)  # an A/B of a server setting (--max_itl_ratio 0)
        t0 = time.perf_counter()
        server = ServerProcess(flags, ready_timeout=min(600.0, self.left())).start()
        entry: dict[str, Any] = {"command": "swiftops deploy " + " ".join(flags),
                                 "startup_s": round(time.perf_counter() - t0, 1), "points": {}}
        try:
            # untimed: the same warm-up the offline engine gets (first connections, kernels' first shapes)
            sweep_point(server.url, pathlib.Path(model_dir).name, self.warmup, WARMUP_TOKENS, len(self.warmup),
                        self.args.client_processes)
            for c, prompts in sets.items():
                before = _itl_histogram(server.url)
                point = sweep_point(server.url, pathlib.Path(model_dir).name, prompts, self.args.output_len, int(c),
                                    self.args.client_processes)
                # the same gaps as the API servers saw them (tokens reaching their event loops), to tell a tail
                # made before the HTTP write (engine, event loop) from one made after it (socket, client)
                point["server_itl"] = _histogram_delta(before, _itl_histogram(server.url))
                entry["points"][c] = point
                print(f"[{backend} served] {json.dumps(point)}", flush=True)
        finally:
            server.stop()
            (self.work / f"{backend}-server.log").write_text(server.output())
            # the engine's start-up timing of its steps and the prefill bound it chose, then the step times it
            # measured while serving and the bound they set (pt on a GPU)
            entry["step_bound_log"] = [line[-260:] for line in server.output().splitlines()
                                       if "a step costs" in line or "measured steps of" in line]
            entry["server_log_tail"] = server.output()[-1500:] if not all(
                p.get("ok") for p in entry["points"].values()) else None
        return entry

    def offline(self, backend: str, model_dir: str, sets: dict[str, list[list[int]]], max_len: int) -> dict[str, Any]:
        spec = {"backend": backend, "model": model_dir, "max_model_len": max_len, "output_len": self.args.output_len,
                "sets": sets, "warmup": self.warmup, "settings": json.loads(self.args.offline_settings),
                "profile": self.args.profile_engine, "phases": self.args.trace_phases}
        spec_file, result_file = self.work / f"{backend}-offline-spec.json", self.work / f"{backend}-offline.json"
        spec_file.write_text(json.dumps(spec))
        code = _run_child([sys.executable, "-m", "benchmarks.serving", "--offline_worker", str(spec_file),
                           "--out", str(result_file)], self.left(), self.work / f"{backend}-offline.log")
        if code != 0 or not result_file.exists():
            return {"ok": False, "returncode": code,
                    "log_tail": (self.work / f"{backend}-offline.log").read_text()[-1500:]}
        return json.loads(result_file.read_text())

    def direct(self, model_dir: str, sets: dict[str, list[list[int]]]) -> dict[str, Any]:
        everything = sets[str(max(int(c) for c in sets))]
        prompts = {"sets": {"main": everything}, "output_len": self.args.output_len,
                   "warmup": self.warmup, "warmup_output_len": WARMUP_TOKENS}
        prompt_file, result_file = self.work / "direct-prompts.json", self.work / "direct.json"
        prompt_file.write_text(json.dumps(prompts))
        # LMDeploy at its own defaults, as our wrapper starts it (no max_batch_size or session_len)
        cmd = [sys.executable, "-m", "benchmarks.lmdeploy_peer", "--model", model_dir, "--prompts", str(prompt_file),
               "--out", str(result_file), "--max_batch_size", "0"]
        if self.args.max_model_len:
            cmd += ["--session_len", str(self.args.max_model_len)]
        code = _run_child(cmd, self.left(), self.work / "direct.log")
        if not result_file.exists():
            return {"ok": False, "returncode": code, "log_tail": (self.work / "direct.log").read_text()[-1500:]}
        return {"returncode": code, **json.loads(result_file.read_text())}


def _model(args: argparse.Namespace) -> tuple[str, int]:
    from benchmarks.bench_model import SHAPES, is_built

    path = pathlib.Path(args.model_dir).resolve() / f"qwen2-{args.shape}-{args.dtype}"
    if not is_built(path, args.shape, args.dtype):
        subprocess.run([sys.executable, "-m", "benchmarks.bench_model", "--shape", args.shape, "--out", str(path),
                        "--dtype", args.dtype] + (["--device", "cpu"] if args.device == "cpu" else []), check=True)
    return str(path), int(SHAPES[args.shape]["vocab_size"])


def criteria(doc: dict[str, Any]) -> list[dict[str, Any]]:
    figures: dict[str, dict[str, float]] = {"pt": {}, "lmdeploy": {}}
    for backend in figures:
        part = doc.get(backend) or {}
        points = (part.get("served") or {}).get("points") or {}
        offline = (part.get("offline") or {}).get("at_concurrency") or {}
        for c, point in points.items():
            if c in offline and offline[c].get("output_tok_s"):
                ratio = point["output_tok_s"] / offline[c]["output_tok_s"]
                figures[backend][f"served_over_offline_c{c}"] = round(ratio, 3)
                part.setdefault("ratios", {})[f"served_over_offline_c{c}"] = round(ratio, 3)
            figures[backend][f"ttft_p99_ms_c{c}"] = point["ttft_p99_ms"]
            if point["itl_p50_ms"]:
                figures[backend][f"itl_p99_over_p50_c{c}"] = round(point["itl_p99_ms"] / point["itl_p50_ms"], 2)
        all_at_once = ((part.get("offline") or {}).get("all_at_once") or {}).get("output_tok_s")
        direct = (((part.get("direct") or {}).get("runs") or {}).get("main") or {}).get("tok_s")
        if all_at_once and direct:
            figures[backend]["offline_over_direct"] = round(all_at_once / direct, 3)
            part.setdefault("ratios", {})["offline_over_direct"] = round(all_at_once / direct, 3)
    out = []
    for backend, key, op, bound, text in CRITERIA:
        value = figures[backend].get(key)
        passed = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out.append({"line": text, "figure": f"{backend}.{key}", "value": value, "bound": f"{op} {bound}",
                    "pass": passed})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="0.5b", help="benchmarks.bench_model shape: 0.5b, 7b or 30m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None, help="cpu: build the model on the CPU (smoke runs)")
    parser.add_argument("--model_dir", default=str(pathlib.Path(__file__).resolve().parent.parent / ".bench-models"),
                        help="where the random models are kept (the throughput benchmark's: built once, shared)")
    parser.add_argument("--concurrency", default="32,128")
    parser.add_argument("--requests_per_client", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--output_len", type=int, default=256)
    parser.add_argument("--max_model_len", type=int, default=None,
                        help="pass this context to every engine (default: none, each engine's own default)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--server_flags", default="", help="more swiftops deploy flags for the served parts")
    parser.add_argument("--offline_settings", default="{}",
                        help='EngineSettings for the offline engine as JSON (a diagnosis: {"max_itl_ratio": 1.75})')
    parser.add_argument("--profile_engine", action="store_true",
                        help="pt offline part: sample the engine thread's stack (benchmarks/thread_sampler.py); "
                        "perturbs the figures a little, so not for headline runs")
    parser.add_argument("--trace_phases", action="store_true",
                        help="pt offline part: split each step into the engine thread's host phases and time its "
                        "kernels with CUDA events (benchmarks/step_trace.py); a diagnosis, not for headline runs")
    parser.add_argument("--client_processes", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--deadline_s", type=float, default=540.0,
                        help="after the model is built: stop starting parts after this long, and stop a running "
                        "child part (recorded with its log) when it runs past it")
    parser.add_argument("--url", default=None, help="measure a running server (no offline figures)")
    parser.add_argument("--model", default=None, help="with --url: the served model name")
    parser.add_argument("--vocab", type=int, default=None, help="with --url: the model's vocabulary size")
    parser.add_argument("--offline_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.offline_worker:  # a child: one backend's offline figures
        result = offline_worker(json.loads(pathlib.Path(args.offline_worker).read_text()))
        pathlib.Path(args.out).write_text(json.dumps(result))
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    run = Run(args)
    if args.url:
        sets = {str(c): random_prompts(c * args.requests_per_client, args.prompt_len, args.vocab, seed=c)
                for c in levels}
        run.doc["external"] = {str(c): sweep_point(args.url, args.model, p, args.output_len, int(c),
                                                   args.client_processes) for c, p in sets.items()}
        run.save()
        print(json.dumps(run.doc, indent=2))
        return
    model_dir, vocab = _model(args)
    run.start_clock()
    max_len = args.max_model_len  # None: each engine's default context (the headline figures)
    sets = {str(c): random_prompts(c * args.requests_per_client, args.prompt_len, vocab, seed=c) for c in levels}
    # Prompts of their own (a different seed): warming up on timed prompts would seed the prefix cache with them.
    run.warmup = random_prompts(WARMUP_REQUESTS, args.prompt_len, vocab, seed=10_007)
    run.doc.update(shape=args.shape, dtype=args.dtype, model=model_dir, prompt_len=args.prompt_len,
                   output_len=args.output_len, concurrency=levels, requests_per_client=args.requests_per_client,
                   command=" ".join(sys.argv), host=platform.node(), python=platform.python_version())
    for part in parts:
        if run.left() < 30:
            run.doc.setdefault("skipped", []).append(part)
            continue
        backend, _, what = part.partition("_")
        entry = run.doc.setdefault(backend, {})
        t0 = time.perf_counter()
        try:
            if what == "served":
                entry["served"] = run.served(backend, model_dir, sets, max_len)
            elif what == "offline":
                entry["offline"] = run.offline(backend, model_dir, sets, max_len)
            else:
                entry["direct"] = run.direct(model_dir, sets)
        except Exception as exc:  # noqa: BLE001 - recorded; the other parts still run
            entry[what] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        entry.setdefault("wall_s", {})[what] = round(time.perf_counter() - t0, 1)
        run.save()
        print(f"[{part}] done in {entry['wall_s'][what]} s", flush=True)
    try:
        import torch
        run.doc["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    except Exception:  # noqa: BLE001 - informational
        pass
    run.save()
    print(json.dumps({"criteria": run.doc["criteria"]}, indent=2))


if __name__ == "__main__":
    main()
