"""Profile a running `swiftops deploy` under streaming load with py-spy (where the server's time goes).

    python benchmarks/profile_server.py --workload gpu --concurrency 32 --out prof.txt
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def summarize(raw: str, top: int = 40) -> str:
    inclusive: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for frame in dict.fromkeys(stack.split(";")):
            inclusive[frame] += int(count)
    return "\n".join(f"{n / max(total, 1):6.1%} {frame[:160]}" for frame, n in inclusive.most_common(top))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=["gpu", "cpu"], default="cpu")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", default="server-profile.txt")
    args = parser.parse_args()
    from benchmarks.serving import random_prompts, sweep_point
    from tests.server_process import ServerProcess

    gpu = args.workload == "gpu"
    if gpu:
        from benchmarks.bench_model import build_qwen25_05b_shaped
        model_dir, vocab, p_len, o_len = str(build_qwen25_05b_shaped(tempfile.mkdtemp())), 151936, 128, 256
    else:
        from swiftops.models.tiny import build_tiny_model
        model_dir, vocab, p_len, o_len = str(build_tiny_model(tempfile.mkdtemp())), 1300, 32, 64
    raw = Path(tempfile.mkdtemp()) / "raw.txt"
    with ServerProcess(["--model", model_dir, "--max_batch_size", str(args.concurrency), "--max_model_len",
                        str(p_len + o_len)], ready_timeout=600) as server:
        # --subprocesses: the engine process too (the API server and the engine run apart since issue 16).
        spy = subprocess.Popen(["py-spy", "record", "-p", str(server.process.pid), "-o", str(raw), "-f", "raw",
                                "-d", str(args.seconds), "-r", "250", "--threads", "--subprocesses"])
        time.sleep(1)
        point = sweep_point(server.url, Path(model_dir).name, random_prompts(args.concurrency * 3, p_len, vocab, 0),
                            o_len, args.concurrency, processes=4)
        spy.wait()
    report = f"{point}\n" + summarize(raw.read_text())
    Path(args.out).write_text(report + "\n\n" + raw.read_text())
    print(report)


if __name__ == "__main__":
    main()
