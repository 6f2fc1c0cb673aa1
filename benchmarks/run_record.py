"""What every engine run of the throughput benchmark shares: the prompt file it reads, the JSON record it
writes after each stage (so a run killed by a timeout keeps what it finished), timing and GPU memory.

Imported by `engine_run.py` (pt, transformers) and `lmdeploy_peer.py` (LMDeploy, in the GPU machine's own
python with the kit on PYTHONPATH), so it imports neither swiftops nor any engine.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import platform
import re
import sys
import time
import traceback
from typing import Any, Callable


def load_prompts(path: str) -> dict[str, Any]:
    """{"sets": {"main": [[ids]...], "b1": [[ids]]}, "output_len": N, "warmup": [[ids]...], "warmup_output_len": M}"""
    return json.loads(pathlib.Path(path).read_text())


class RunRecord:
    """The JSON one engine process writes; rewritten whole after every change."""

    def __init__(self, out: str, engine: str, **fields: Any) -> None:
        self.out = pathlib.Path(out)
        self.data: dict[str, Any] = {"engine": engine, "ok": False, "pid": os.getpid(),
                                     "python": platform.python_version(), "runs": {}, **fields}
        self.save()

    def set(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out)

    def fail(self, where: str, exc: BaseException) -> None:
        trace = traceback.format_exc()
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SystemExit):  # a library that logged why and exited: name the first error behind it
            causes = re.findall(r"^(\w*(?:Error|Exception): .+)$", trace, re.M)
            if causes:
                error += f" (after {causes[0]})"
        self.data.setdefault("errors", []).append({"where": where, "error": error[:2000], "traceback": trace[-6000:]})
        self.save()
        print(f"[{self.data['engine']}] {where} failed: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr,
              flush=True)

    def capture(self, body: Callable[[], None], warnings: "WarningLog") -> int:
        """Run an engine's timed work: what finished stays recorded, a failure is recorded with its traceback, and
        the exit status says whether every run produced its tokens."""
        try:
            body()
            self.set(ok=bool(self.data["runs"]) and all(r.get("ok") for r in self.data["runs"].values()))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the record says what failed; the parent goes on
            self.fail("engine", exc)  # SystemExit: LMDeploy's environment checks call exit(1) after logging why
        finally:
            self.set(warnings=warnings.lines)
        return 0 if self.data["ok"] else 1


def sync() -> None:
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed_run(name: str, n_requests: int, expected_tokens: int, fn: Callable[[], int]) -> dict[str, Any]:
    """Times fn (which returns the completion tokens it got) and checks the count."""
    sync()
    t0 = time.perf_counter()
    produced = fn()
    sync()
    return run_figures(name, n_requests, expected_tokens, produced, time.perf_counter() - t0)


def run_figures(name: str, n_requests: int, expected_tokens: int, produced: int, seconds: float) -> dict[str, Any]:
    """One timed set: tokens/s = completion tokens actually produced / wall seconds; a wrong count is an error."""
    run = {"requests": n_requests, "completion_tokens": produced, "expected_tokens": expected_tokens,
           "seconds": round(seconds, 4), "tok_s": round(produced / seconds, 2) if seconds > 0 else None,
           "ok": produced == expected_tokens,
           # the host's 1-minute load average at the end: on a shared CPU machine, other jobs move the figures
           "load_avg_1m": round(os.getloadavg()[0], 2)}
    if produced != expected_tokens:
        run["error"] = f"produced {produced} completion tokens, expected {expected_tokens}"
    print(f"  {name}: {produced} tokens in {seconds:.2f} s = {run['tok_s']} tok/s"
          + ("" if run["ok"] else f"  !! {run['error']}"), flush=True)
    return run


def device_info() -> dict[str, Any]:
    import torch
    info: dict[str, Any] = {"torch": torch.__version__}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except Exception as exc:  # noqa: BLE001 - informational
        info["transformers"] = f"unavailable: {exc}"
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - CPU machines may lack it
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), gpu_total_gb=round(props.total_memory / 2**30, 2),
                    cuda=torch.version.cuda)
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def memory_info() -> dict[str, Any]:
    """Peak torch allocation in this process and what the whole device has in use now (KV caches included)."""
    import torch
    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {"peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2),
            "device_used_gb": round((total - free) / 2**30, 2)}


class WarningLog(logging.Handler):
    """Keeps the engine's warnings (fallback runner, CUDA graphs off, OOM retries) for the JSON."""

    def __init__(self, limit: int = 50) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.limit = limit

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < self.limit:
            self.lines.append(f"{record.name}: {record.getMessage()}"[:500])


def exit_with(run: Callable[[], int]) -> None:
    """Run an engine process's `run`, then leave at once: its record is on disk, and engine threads (LMDeploy's
    loop, the pt engine thread) must not hold the exit up."""
    status = run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
