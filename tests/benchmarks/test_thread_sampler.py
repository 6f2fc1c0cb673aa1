"""The engine-thread sampler (benchmarks/thread_sampler.py) finds where a thread spends its time."""
from __future__ import annotations

import threading
import time

from benchmarks.thread_sampler import ThreadSampler


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _sleep_a_while(stop: threading.Event) -> None:
    stop.wait()


def _busy_then_idle(stop: threading.Event) -> None:
    _spin(0.3)
    _sleep_a_while(stop)


def test_the_busy_function_and_the_wait_show_up_in_proportion():
    stop = threading.Event()
    worker = threading.Thread(target=_busy_then_idle, args=(stop,))
    worker.start()
    sampler = ThreadSampler(worker, interval_s=0.002)
    sampler.start()
    time.sleep(0.6)
    report = sampler.stop()
    stop.set()
    worker.join()
    assert report["samples"] >= 50
    totals = {where: share for where, _, share in report["total"]}
    spin = totals.get("benchmarks/test_thread_sampler.py:_spin", 0)
    waiting = totals.get("benchmarks/test_thread_sampler.py:_sleep_a_while", 0)
    assert 0.2 < spin < 0.8 and 0.2 < waiting < 0.8  # about half each: 0.3 s busy, then waiting
    assert totals["benchmarks/test_thread_sampler.py:_busy_then_idle"] > 0.95  # on the stack throughout
    assert any("_spin" in stack for stack, _, _ in report["stacks"])
