"""CPU an API server spends per streamed chunk and per request (`swiftops deploy`, one API server, the tiny model).

The API server's own CPU time (all its threads, from /proc; not the engine process, not the clients) over a
sweep of streaming clients, divided by the chunks they received and by the requests: the per-chunk figure is what
limits the tokens a second one API server can deliver on a GPU host, where the engine is not the limit. On CPU
the engine is slow, but the API server's work per chunk is the same, so this is the A/B figure for the per-chunk
path (gate, SSE framing, the route's chunk shaper, the IPC relay, detokenization).

    python benchmarks/api_server_cpu.py --clients 64 --out_len 256 [--profile prof.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """`pid`'s descendants (the engine process and its helpers)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_children(int(child))]
    return found


def pin_apart(server_pid: int) -> None:
    """The API server (all its threads) alone on CPU 0; its engine process, this process and the clients it
    starts on the other CPUs: the API server's CPU time is then not inflated by sharing a core (on the 2-core
    CI machine unpinned runs of the same tree varied by 25%)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    rest = set(cpus[1:])
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpus[0]})
    for child in _children(server_pid):
        for task in Path(f"/proc/{child}/task").iterdir():
            os.sched_setaffinity(int(task.name), rest)
    os.sched_setaffinity(0, rest)


def measure(model_dir: str, clients: int, requests: int, prompt_len: int, out_len: int, vocab: int,
            profile: str | None, repeats: int, pin: bool) -> dict[str, Any]:
    from benchmarks.profile_server import summarize
    from benchmarks.serving import random_prompts, sweep_point
    from tests.server_process import ServerProcess

    points = []
    with ServerProcess(["--model", model_dir, "--api_server_count", "1", "--max_batch_size", str(clients)],
                       ready_timeout=300) as server:
        pid = server.process.pid
        if pin:
            pin_apart(pid)
        sweep_point(server.url, Path(model_dir).name, random_prompts(clients, prompt_len, vocab, 1), 8, clients,
                    processes=1)  # warm: connections, the shapes' first steps
        for repeat in range(repeats):
            spy = None
            raw = Path(tempfile.mkdtemp()) / "raw.txt"
            if profile and repeat == 0:
                py_spy = str(Path(sys.executable).with_name("py-spy"))
                spy = subprocess.Popen([py_spy, "record", "-p", str(pid), "-o", str(raw), "-f", "raw", "-r", "200",
                                        "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            before = cpu_seconds(pid)
            point = sweep_point(server.url, Path(model_dir).name,
                                random_prompts(requests, prompt_len, vocab, 100 + repeat), out_len, clients,
                                processes=2)
            spent = cpu_seconds(pid) - before
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
                spy.wait(timeout=60)
                Path(profile).write_text(summarize(raw.read_text(), top=80) + "\n\n" + raw.read_text())
            chunks = point["chunks"]
            points.append({"api_server_cpu_s": round(spent, 3), "chunks": chunks, "requests": requests,
                           "us_per_chunk": round(spent / max(chunks, 1) * 1e6, 1),
                           "ms_per_request": round(spent / requests * 1e3, 3),
                           "output_tok_s": point["output_tok_s"], "ok": point["ok"]})
    best = min(points, key=lambda p: p["us_per_chunk"])
    return {"clients": clients, "requests": requests, "prompt_len": prompt_len, "out_len": out_len,
            "best_us_per_chunk": best["us_per_chunk"], "runs": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--prompt_len", type=int, default=32)
    parser.add_argument("--out_len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_pin", action="store_true", help="leave the processes where the kernel puts them")
    parser.add_argument("--profile", help="write a py-spy profile of the API server (first repeat) here")
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args()
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        parser.error("--profile needs py-spy beside this Python: pip install py-spy")
    from swiftops.models.tiny import build_tiny_model

    model_dir = str(build_tiny_model(tempfile.mkdtemp()))
    result = measure(model_dir, args.clients, args.requests, args.prompt_len, args.out_len, 1300, args.profile,
                     args.repeats, not args.no_pin)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
