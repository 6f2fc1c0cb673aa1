"""Where one thread's time goes: a sampling profiler run inside the benchmark's process (py-spy's idea without
ptrace, which the lent machines' containers may not allow).

A daemon thread reads the target thread's Python stack (`sys._current_frames`) every `interval_s` and counts, per
line, the samples in which it is the innermost frame (`self`), per function the samples in which it is anywhere on
the stack (`total`), and the innermost four frames as a stack. A thread blocked in C (a CUDA synchronisation, a
lock) shows as the Python line that called it, so waiting for the GPU is the line that reads its tokens back.
Each sample takes the GIL for a few microseconds: it perturbs the thread it watches a little, which is why it is a
separate, opt-in part of a benchmark (`benchmarks/serving.py --profile_engine`), never of a timed figure.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any


def _where(code: Any, line: int | None = None) -> str:
    parts = code.co_filename.replace("\\", "/").split("/")
    name = "/".join(parts[-2:])
    return f"{name}:{code.co_name}" + (f":{line}" if line is not None else "")


class ThreadSampler:
    def __init__(self, thread: threading.Thread, interval_s: float = 0.0005, top: int = 30) -> None:
        self.target = thread
        self.interval_s = interval_s
        self.top = top
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.samples = 0
        self.self_counts: collections.Counter[str] = collections.Counter()
        self.total_counts: collections.Counter[str] = collections.Counter()
        self.stacks: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        self._stop.clear()
        self._worker = threading.Thread(target=self._sample, name="thread-sampler", daemon=True)
        self._worker.start()

    def _sample(self) -> None:
        ident = self.target.ident
        while not self._stop.is_set():
            frame = sys._current_frames().get(ident)  # type: ignore[arg-type]
            if frame is not None:
                self.samples += 1
                self.self_counts[_where(frame.f_code, frame.f_lineno)] += 1
                seen = set()
                inner: list[str] = []
                f = frame
                while f is not None:
                    where = _where(f.f_code)
                    if len(inner) < 4:
                        inner.append(_where(f.f_code, f.f_lineno))
                    if where not in seen:
                        seen.add(where)
                        self.total_counts[where] += 1
                    f = f.f_back
                self.stacks[" <- ".join(inner)] += 1
            time.sleep(self.interval_s)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._worker is not None:
            self._worker.join()
        n = max(1, self.samples)

        def table(counter: collections.Counter[str], top: int) -> list[list[Any]]:
            return [[where, count, round(count / n, 4)] for where, count in counter.most_common(top)]

        return {
            "samples": self.samples,
            "interval_ms": self.interval_s * 1000,
            "self": table(self.self_counts, self.top),
            "total": table(self.total_counts, self.top + 10),
            "stacks": table(self.stacks, self.top),
        }
