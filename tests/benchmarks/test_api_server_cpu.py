"""The API server's CPU per chunk (benchmarks/api_server_cpu.py) on the tiny model: the server's own CPU time over
what its streaming clients received, with the server pinned apart from the engine and the clients."""
from __future__ import annotations

import os

from benchmarks.api_server_cpu import cpu_seconds, measure


def test_cpu_seconds_grow_with_work_in_this_process():
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(3_000_000))
    assert cpu_seconds(os.getpid()) > before


def test_every_chunk_is_counted_and_costs_the_server_cpu(tiny_model_dir):
    affinity = os.sched_getaffinity(0)
    try:
        doc = measure(str(tiny_model_dir), clients=4, requests=8, prompt_len=8, out_len=16, vocab=1300,
                      profile=None, repeats=1, pin=True)
    finally:
        os.sched_setaffinity(0, affinity)  # pinning moved this process off the first CPU
    run = doc["runs"][0]
    assert run["ok"] and 8 <= run["chunks"] <= 8 * 16  # one event per token, fewer when tokens merged
    assert run["api_server_cpu_s"] > 0 and run["us_per_chunk"] > 0 and run["ms_per_request"] > 0
    assert doc["best_us_per_chunk"] == run["us_per_chunk"]
