"""Offline throughput: swiftops' pt engine at its defaults against LMDeploy's PyTorch engine (GPU) and
transformers' static `generate` (CPU), same random-weight model and prompt token ids, EOS ignored, greedy.

    python -m benchmarks.throughput --workload small --out results.json        # 0.5B shape, 256 x 128 -> 256 + batch 1
    python -m benchmarks.throughput --workload large --workload long --out r.json  # 7B shape; 16 x 16,384 -> 256
    python -m benchmarks.throughput --workload cpu --out cpu.json                # ~30M model, 64 chat requests, CPU

Workloads (engines in the order they run; each in its own process, one after another):
  small  Qwen2.5-0.5B shape, bf16: 256 x 128 -> 256 and batch 1 (128 -> 256). pt at defaults, LMDeploy
         (max_batch_size=256), pt at max_model_len = prompt + output.
  large  Qwen2.5-7B shape, bf16: 256 x 512 -> 256 and batch 1 (512 -> 256). Same three.
  long   Qwen2.5-7B shape, bf16: 16 x 16,384 -> 256. pt at defaults, LMDeploy with session_len = the
         model's max_position_embeddings (the default pt uses too).
  cpu    ~30M Qwen2 shape, float32, CPU: 64 chat requests (~20 prompt tokens) x 64. pt at max_batch_size 16,
         transformers' static generate in batches of 16, pt at max_model_len = prompt + output; ms-swift's
         PtEngine too when --msswift_python names a python that has it.

"Defaults" means `PtEngine(path, torch_dtype=...)` with nothing else. Every engine is warmed up on other
prompts of the same shape, then each prompt set is timed: tok/s = completion tokens produced / wall
seconds, and the count is checked. An engine that fails, hangs past its time or is killed is recorded
(error, return code, whatever it finished) and the next engine runs. --out is rewritten after every
engine, so a run cut short keeps what finished. Models are built once under --model_dir and reused.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/throughput.py` works as well as `python -m benchmarks.throughput`
    sys.path.insert(0, str(REPO))


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    label: str
    kind: str  # pt | hf | lmdeploy | msswift
    pt_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    shape: str
    dtype: str
    requests: int
    prompt_len: int  # for chat prompts: the longest prompt
    output_len: int
    batch1: bool
    engines: tuple[EngineSpec, ...]
    chat: bool = False
    warmup_requests: int = 4
    warmup_output_len: int = 16
    lmdeploy_session_len: Optional[int] = None
    engine_timeout_s: int = 300
    device: str = "cuda"  # where the model's weights are initialised (cuda falls back to cpu without a GPU)


def _gpu_engines(tuned_len: int) -> tuple[EngineSpec, ...]:
    return (EngineSpec("pt", "pt", note="PtEngine(path, torch_dtype='bfloat16'): defaults"),
            EngineSpec("lmdeploy", "lmdeploy", note="AsyncEngine, PytorchEngineConfig(max_batch_size=256, dtype)"),
            EngineSpec("pt_tuned", "pt", {"max_model_len": tuned_len}, note="max_model_len = prompt + output"))


WORKLOADS = {
    "small": Workload("small", "0.5b", "bfloat16", 256, 128, 256, True, _gpu_engines(128 + 256),
                      engine_timeout_s=240),
    "large": Workload("large", "7b", "bfloat16", 256, 512, 256, True, _gpu_engines(512 + 256),
                      engine_timeout_s=300),
    "long": Workload("long", "7b", "bfloat16", 16, 16384, 256, False,
                     (EngineSpec("pt", "pt", note="PtEngine(path, torch_dtype='bfloat16'): defaults"),
                      EngineSpec("lmdeploy", "lmdeploy", note="max_batch_size=256, session_len = the model's "
                                 "max_position_embeddings (32768), the default pt uses; LMDeploy needs >= 16,640")),
                     warmup_requests=2, warmup_output_len=4, lmdeploy_session_len=32768, engine_timeout_s=300),
    "cpu": Workload("cpu", "30m", "float32", 64, 0, 64, False,
                    (EngineSpec("pt", "pt", {"max_batch_size": 16}, note="PtEngine(path, max_batch_size=16)"),
                     EngineSpec("hf", "hf", note="transformers generate, static batches of 16, left-padded"),
                     EngineSpec("pt_tuned", "pt", {"max_batch_size": 16, "max_model_len": -1},
                                note="max_batch_size 16, max_model_len = longest prompt + output"),
                     EngineSpec("msswift", "msswift", note="ms-swift's PtEngine(max_batch_size=16), own venv")),
                    chat=True, engine_timeout_s=300, device="cpu"),
}


def random_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Seeded token ids in [10, vocab - 10): the same for every engine of a workload."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, vocab - 10, (n, length), generator=g).tolist()


def chat_prompts(model_path: pathlib.Path, n: int, vocab: int, seed: int) -> list[list[int]]:
    """Short user messages (12-18 random words) through the model's chat template: about 20 tokens each."""
    import random

    from transformers import AutoTokenizer

    from benchmarks.bench_model import encode_text
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        words = " ".join(f"w{rng.randrange(10, vocab - 10)}" for _ in range(rng.randint(12, 18)))
        text = tokenizer.apply_chat_template([{"role": "user", "content": words}], add_generation_prompt=True,
                                             tokenize=False)
        prompts.append(encode_text(model_path, text))
    return prompts


def build_prompt_file(work: Workload, model_path: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    config = json.loads((model_path / "config.json").read_text())
    vocab = int(config["vocab_size"])
    if work.chat:
        main = chat_prompts(model_path, work.requests, vocab, seed=0)
        warmup = chat_prompts(model_path, work.warmup_requests, vocab, seed=2)
        sets = {"main": main}
    else:
        main = random_prompts(work.requests, work.prompt_len, vocab, seed=0)
        warmup = random_prompts(work.warmup_requests, work.prompt_len, vocab, seed=2)
        sets = {"main": main}
        if work.batch1:
            sets["b1"] = random_prompts(1, work.prompt_len, vocab, seed=1)
    data = {"sets": sets, "output_len": work.output_len, "warmup": warmup,
            "warmup_output_len": work.warmup_output_len}
    out.write_text(json.dumps(data))
    lengths = [len(p) for p in main]
    return {"requests": len(main), "prompt_tokens_min": min(lengths), "prompt_tokens_max": max(lengths),
            "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1), "output_len": work.output_len,
            "sets": {k: len(v) for k, v in sets.items()}, "warmup_requests": len(warmup),
            "vocab_size": vocab, "max_position_embeddings": config.get("max_position_embeddings")}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")  # local models only: no hub lookups (the GPU machine has no network)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # progress bars would fill the run tool's output tail
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_child(cmd: list[str], timeout: float, label: str) -> dict[str, Any]:
    """Runs one child in its own process group; on timeout the whole group (engine workers too) is killed."""
    print(f"[{label}] $ {shlex.join(cmd)}  (timeout {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(), start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        print(f"[{label}] timed out after {timeout:.0f} s: killing its process group", flush=True)
    finally:
        _kill_group(proc)
    return {"returncode": proc.returncode, "timed_out": timed_out, "wall_s": round(time.perf_counter() - t0, 1)}


def _kill_group(proc: subprocess.Popen) -> None:
    """Ends the child's whole process group (LMDeploy and compile workers), so the next engine gets the GPU."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if proc.poll() is None:
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # the leader is gone; give its group a moment, then stop trying once it is empty
        time.sleep(0.5)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break


class Benchmark:
    """Runs workloads and keeps one JSON document up to date on disk."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.work_dir = pathlib.Path(tempfile.mkdtemp(prefix="swiftops-bench-"))
        self.doc: dict[str, Any] = {
            "command": shlex.join([sys.executable] + sys.argv), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime()),
            "host": host_info(), "workloads": {}}
        self.save()

    def remaining(self) -> float:
        if self.args.deadline_s is None:
            return float("inf")
        return self.args.deadline_s - (time.monotonic() - self.t0)

    def save(self) -> None:
        if not self.args.out:
            return
        out = pathlib.Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2, default=str))
        tmp.replace(out)

    def run_workload(self, work: Workload) -> None:
        entry: dict[str, Any] = {"spec": _spec_json(work), "engines": {}, "ratios": {}}
        self.doc["workloads"][work.name] = entry
        print(f"\n=== workload {work.name}: {work.requests} x {work.prompt_len or '~20 (chat)'} -> "
              f"{work.output_len}, {work.shape} shape, {work.dtype} ===", flush=True)
        try:
            model = self.build_model(work, entry)
            prompts_file = self.work_dir / f"{work.name}-prompts.json"
            entry["prompts"] = build_prompt_file(work, model, prompts_file)
        except Exception as exc:  # noqa: BLE001 - recorded; the next workload still runs
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"[{work.name}] setup failed: {entry['error']}", flush=True)
            self.save()
            return
        self.save()
        wanted = set(self.args.engines.split(",")) if self.args.engines else None
        rounds = max(1, getattr(self.args, "rounds", 1) or 1)
        specs = [spec for spec in work.engines if wanted is None or spec.label in wanted]
        for index in range(rounds):  # round-robin: on a shared machine every engine sees the same spread of load
            for spec in round_order(specs, index):
                record = self.run_engine(work, spec, model, prompts_file, entry["prompts"])
                if rounds > 1:
                    add_round(record, entry["engines"].get(spec.label))
                entry["engines"][spec.label] = record
                entry["ratios"] = ratios(entry["engines"])
                entry["criteria"] = criteria(work.name, entry["engines"], entry["ratios"])
                self.save()
        entry["summary"] = summary(entry["engines"])

    def build_model(self, work: Workload, entry: dict[str, Any]) -> pathlib.Path:
        from benchmarks.bench_model import is_built
        path = pathlib.Path(self.args.model_dir).resolve() / f"qwen2-{work.shape}-{work.dtype}"
        if is_built(path, work.shape, work.dtype):
            print(f"[{work.name}/model] reusing {path}", flush=True)
            entry["model"] = {"path": str(path), **json.loads((path / "bench_model.json").read_text()), "reused": True}
            return path
        cmd = [sys.executable, "-m", "benchmarks.bench_model", "--shape", work.shape, "--out", str(path),
               "--dtype", work.dtype] + (["--device", "cpu"] if work.device == "cpu" else [])
        result = run_child(cmd, min(600.0, self.remaining()), f"{work.name}/model")
        marker = path / "bench_model.json"
        if result["returncode"] != 0 or not marker.exists():
            raise RuntimeError(f"building the {work.shape} model failed: {result}")
        entry["model"] = {"path": str(path), **json.loads(marker.read_text()), "wall_s": result["wall_s"]}
        return path

    def run_engine(self, work: Workload, spec: EngineSpec, model: pathlib.Path, prompts_file: pathlib.Path,
                   prompts: dict[str, Any]) -> dict[str, Any]:
        out = self.work_dir / f"{work.name}-{spec.label}.json"
        if self.remaining() < 30:
            return {"ok": False, "skipped": f"not started: {self.remaining():.0f} s left of --deadline_s"}
        timeout = min(float(self.args.engine_timeout_s or work.engine_timeout_s), self.remaining() - 5)
        cmd = self.engine_command(work, spec, model, prompts_file, out, prompts)
        if cmd is None:
            return {"ok": False, "skipped": "no --msswift_python given (ms-swift needs its own venv)"}
        result = run_child(cmd, timeout, f"{work.name}/{spec.label}")
        try:
            record = json.loads(out.read_text())
        except (OSError, ValueError) as exc:
            record = {"ok": False, "error": f"the engine process left no readable JSON ({exc})"}
        record.update(result, command=shlex.join(cmd), note=spec.note)
        if result["timed_out"]:
            record["ok"] = False
            record.setdefault("errors", []).append({"where": "parent", "error": f"timed out after {timeout:.0f} s"})
        elif result["returncode"] != 0 and record.get("ok"):
            record["ok"] = False
        return record

    def engine_command(self, work: Workload, spec: EngineSpec, model: pathlib.Path, prompts_file: pathlib.Path,
                       out: pathlib.Path, prompts: dict[str, Any]) -> Optional[list[str]]:
        common = ["--model", str(model), "--prompts", str(prompts_file), "--out", str(out)]
        if spec.kind in ("pt", "hf"):
            cmd = [sys.executable, "-m", "benchmarks.engine_run", "--engine", spec.kind, "--label", spec.label,
                   "--dtype", work.dtype] + common
            if spec.kind == "pt":
                kwargs = dict(spec.pt_kwargs)
                if kwargs.get("max_model_len") == -1:  # chat prompts: the longest one decides
                    kwargs["max_model_len"] = prompts["prompt_tokens_max"] + work.output_len
                kwargs.update(json.loads(self.args.pt_kwargs or "{}"))
                cmd += ["--engine_kwargs", json.dumps(kwargs)]
            else:
                cmd += ["--batch", "16"]
            return cmd
        if spec.kind == "lmdeploy":
            cmd = [sys.executable, "-m", "benchmarks.lmdeploy_peer", "--label", spec.label, "--dtype", work.dtype,
                   "--max_batch_size", "256"] + common
            if work.lmdeploy_session_len:
                cmd += ["--session_len", str(work.lmdeploy_session_len)]
            if self.args.lmdeploy_instance:
                cmd.append("--also_instance")
            return cmd
        if spec.kind == "msswift":
            if not self.args.msswift_python:
                return None
            return [self.args.msswift_python, str(REPO / "benchmarks" / "msswift_peer.py"), "--max_batch_size", "16",
                    "--label", spec.label] + common
        raise ValueError(spec.kind)


def _spec_json(work: Workload) -> dict[str, Any]:
    data = dataclasses.asdict(work)
    data["engines"] = [dataclasses.asdict(e) for e in work.engines]
    return data


def add_round(record: dict[str, Any], previous: Optional[dict[str, Any]]) -> None:
    """With --rounds: keep every round's tok/s per set, and the median of the rounds that succeeded."""
    import statistics
    record["rounds"] = (previous or {}).get("rounds", []) + [
        {name: (run.get("tok_s") if run.get("ok") else None) for name, run in (record.get("runs") or {}).items()}]
    for name, run in (record.get("runs") or {}).items():
        values = [r[name] for r in record["rounds"] if r.get(name) is not None]
        if values:
            run["tok_s_median"] = round(statistics.median(values), 2)
            run["ok"] = True  # the median stands for the rounds that finished; each round is kept above


def _tok_s(record: dict[str, Any], run: str) -> Optional[float]:
    figures = (record.get("runs") or {}).get(run) or {}
    if figures.get("tok_s_median") is not None:
        return figures["tok_s_median"]
    return figures.get("tok_s") if figures.get("ok") else None


def ratios(engines: dict[str, dict[str, Any]]) -> dict[str, float]:
    """pt / peer for each set both finished, and pt at defaults / pt tuned (criterion e)."""
    pairs = [("pt", "lmdeploy"), ("pt", "hf"), ("pt", "msswift"), ("pt", "pt_tuned"), ("pt_tuned", "lmdeploy")]
    found = {}
    for a, b in pairs:
        if a not in engines or b not in engines:
            continue
        for run in ("main", "b1"):
            x, y = _tok_s(engines[a], run), _tok_s(engines[b], run)
            if x and y:
                found[f"{a}/{b}" + ("" if run == "main" else f" ({run})")] = round(x / y, 3)
    return found


# Issue 15's "Done when" lines that one workload decides: (ratio key, minimum, what it stands for).
CRITERIA = {
    "small": [("pt/lmdeploy", 1.0, "(a) 0.5B, 256 x 128 -> 256, defaults: pt >= 1.0x LMDeploy (aim 1.5x)"),
              ("pt/lmdeploy (b1)", 1.0, "(c) batch 1, 0.5B: pt >= LMDeploy"),
              ("pt/pt_tuned", 0.9, "(e) default max_model_len within 10% of max_model_len = prompt + output")],
    "large": [("pt/lmdeploy", 1.0, "(b) 7B, 256 x 512 -> 256, defaults: pt >= 1.0x LMDeploy"),
              ("pt/lmdeploy (b1)", 1.0, "(c) batch 1, 7B: pt >= LMDeploy"),
              ("pt/pt_tuned", 0.9, "(e) default max_model_len within 10% of max_model_len = prompt + output")],
    "long": [("pt/lmdeploy", 0.9, "(d) 7B, 16 x 16,384 -> 256: pt >= 0.9x LMDeploy, CUDA graphs, no OOM")],
    "cpu": [("pt/hf", 1.3, "(f) CPU, 30M model, pt at max_batch_size 16 >= 1.3x static generate in 16s"),
            ("pt/pt_tuned", 0.9, "(e) on CPU: default max_model_len within 10% of prompt + output")],
}


def criteria(workload: str, engines: dict[str, dict[str, Any]], found: dict[str, float]) -> list[dict[str, Any]]:
    """Each criterion this workload decides: the measured ratio and whether it holds (None: not measured)."""
    rows = []
    for key, minimum, text in CRITERIA.get(workload, []):
        ratio = found.get(key)
        holds = None if ratio is None else ratio >= minimum
        row = {"criterion": text, "ratio": key, "measured": ratio, "minimum": minimum, "holds": holds}
        if text.startswith("(d)") and holds is not None:  # also: decode replayed CUDA graphs, nothing failed
            graphs = ((engines.get("pt") or {}).get("effective") or {}).get("uses_cuda_graphs")
            row["cuda_graphs"] = graphs
            row["holds"] = bool(holds and graphs is not False and (engines.get("pt") or {}).get("ok"))
        rows.append(row)
    return rows


def summary(engines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = {}
    for label, rec in engines.items():
        eff = rec.get("effective") or {}
        rows[label] = {
            "ok": rec.get("ok"),
            "tok_s": {k: v.get("tok_s_median", v.get("tok_s")) for k, v in (rec.get("runs") or {}).items()},
            "max_batch_size": eff.get("max_batch_size", eff.get("batch")), "max_model_len": eff.get("max_model_len"),
            "runner": eff.get("runner_name"), "cuda_graphs": eff.get("uses_cuda_graphs"),
            "startup_s": rec.get("startup_s"), "peak_gb": (rec.get("memory") or {}).get("peak_allocated_gb"),
            "error": rec.get("skipped") or (rec.get("errors") or [{}])[-1].get("error")}
    return rows


def host_info() -> dict[str, Any]:
    """Versions as the parent sees them (it never touches CUDA, so the GPU stays whole for the engines)."""
    from importlib import metadata
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count()}
    for dist in ("torch", "transformers", "triton", "lmdeploy", "swiftops"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                      "--format=csv,noheader"], capture_output=True, text=True,
                                     timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                            timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def print_table(doc: dict[str, Any]) -> None:
    for name, entry in doc["workloads"].items():
        print(f"\n{name}: {entry.get('error') or ''}")
        for label, row in (entry.get("summary") or summary(entry.get("engines", {}))).items():
            figures = "  ".join(f"{k}={v}" for k, v in row["tok_s"].items())
            print(f"  {label:10s} ok={row['ok']!s:5s} {figures}  batch={row['max_batch_size']} "
                  f"max_model_len={row['max_model_len']} runner={row['runner']} graphs={row['cuda_graphs']} "
                  f"startup={row['startup_s']}s peak={row['peak_gb']}GB" + (f"  ERROR {row['error']}" if row['error']
                                                                             else ""))
        for key, value in (entry.get("ratios") or {}).items():
            print(f"  ratio {key}: {value}")
        for row in entry.get("criteria") or []:
            verdict = {True: "holds", False: "NOT MET", None: "not measured"}[row["holds"]]
            print(f"  {verdict:12s} {row['criterion']}: {row['ratio']} = {row['measured']} (>= {row['minimum']})")


def round_order(specs: list[Any], index: int) -> list[Any]:
    """The engines of round `index`: each round starts one engine later, so that no engine always takes the same
    place in a round while the shared machine's load drifts within it."""
    turn = index % max(1, len(specs))
    return specs[turn:] + specs[:turn]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS), required=True,
                        help="repeat to run several in one process tree, in the order given")
    parser.add_argument("--out", default=None, help="JSON file, rewritten after every engine")
    parser.add_argument("--model_dir", default=str(REPO / ".bench-models"),
                        help="where the random-weight models are built and reused (the 7B takes ~15 GB)")
    parser.add_argument("--engines", default=None,
                        help="only these engines, comma-separated labels (pt,lmdeploy,pt_tuned,hf,msswift)")
    parser.add_argument("--deadline_s", type=float, default=None,
                        help="stop starting engines this many seconds after start; running ones are cut to fit")
    parser.add_argument("--engine_timeout_s", type=float, default=None, help="override each workload's per-engine limit")
    parser.add_argument("--pt_kwargs", default=None, help="JSON merged into every PtEngine's keyword arguments")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the engines this many times round-robin and compare medians (shared CPU machines)")
    parser.add_argument("--lmdeploy_instance", action="store_true",
                        help="LMDeploy also times its engine instance without detokenization (reference figure)")
    parser.add_argument("--msswift_python", default=None,
                        help="python of a venv with ms-swift installed, for the cpu workload's ms-swift peer")
    args = parser.parse_args()
    # An outer `timeout` (SIGTERM) unwinds like Ctrl-C: the running engine's process group is killed, so no
    # orphan keeps the GPU, and the JSON is saved with what finished.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Benchmark(args)
    try:
        for name in args.workload:
            bench.run_workload(WORKLOADS[name])
            bench.save()
    except (KeyboardInterrupt, SystemExit) as exc:
        bench.doc["interrupted"] = f"{type(exc).__name__} {getattr(exc, 'code', '')}".strip()
        print(f"interrupted ({bench.doc['interrupted']}): saving what finished", flush=True)
        raise
    finally:
        bench.doc["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        bench.save()
    print_table(bench.doc)
    if args.out:
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
