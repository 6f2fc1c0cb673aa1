"""benchmarks/prefix_cache.py on CPU at a tiny scale: the workloads' token ids, and a two-turn replay through pt
with its prefix cache on and off, each engine in its own process, figures and counters in the JSON."""
from __future__ import annotations

import argparse
import json
import time

import pytest

from benchmarks import prefix_cache
from benchmarks.prefix_cache import WORKLOADS, Workload, build_phases, run_workload


def test_the_shared_prefix_workloads_are_the_issues():
    for name, shape in (("shared_small", "0.5b"), ("shared_large", "7b")):
        work = WORKLOADS[name]
        assert (work.shape, work.conversations, work.system_len, work.user_len, work.output_len) == \
            (shape, 256, 2000, 128, 128)
        assert work.engines == ("pt", "pt_nocache", "lmdeploy")
    phases = build_phases(WORKLOADS["shared_small"], vocab=151936)
    assert len(phases) == 1 and len(phases[0]) == 256
    assert all(p[:2000] == phases[0][0][:2000] and len(p) == 2128 for p in phases[0])
    assert len({tuple(p[2000:]) for p in phases[0]}) == 256  # each request's own 128 tokens differ


def test_a_multi_turn_replay_resends_the_history():
    work = Workload("t", "30m", "float32", conversations=3, system_len=8, user_len=2, output_len=2, turns=3,
                    answer_len=4)
    phases = build_phases(work, vocab=100)
    for turn in range(1, 3):
        for before, now in zip(phases[turn - 1], phases[turn]):
            assert now[:len(before)] == before and len(now) == len(before) + 4 + 2


def test_pt_with_and_without_its_cache_in_separate_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = Workload("tiny", "30m", "float32", conversations=4, system_len=64, user_len=8, output_len=3, turns=2,
                    answer_len=8, engines=("pt", "pt_nocache"), device="cpu", engine_timeout_s=180)
    args = argparse.Namespace(model_dir=str(tmp_path / "models"), engines=None, deadline_s=None,
                              engine_timeout_s=None, pt_kwargs=json.dumps({"max_batch_size": 4}))
    doc = {"workloads": {}}
    run_workload(work, args, doc, lambda: None, time.monotonic())
    entry = doc["workloads"]["tiny"]
    cached, plain = entry["engines"]["pt"], entry["engines"]["pt_nocache"]
    for record in (cached, plain):
        assert record["ok"], record.get("errors") or record.get("error")
        assert set(record["runs"]) == {"turn1", "turn2"}
        assert all(run["completion_tokens"] == 12 and run["ttft_ms_p50"] > 0 for run in record["runs"].values())
        assert record["all_turns"]["completion_tokens"] == 24
    assert cached["effective"]["prefix_caching"] is True and plain["effective"]["prefix_caching"] is False
    # turn 1: three of four requests find the 64-token system prompt (4 blocks); turn 2: each its own turn 1 prompt
    prompt_tokens = 4 * (64 + 8) + 4 * (64 + 8 + 8 + 8)
    assert cached["prefix_cache"]["queried_tokens"] == prompt_tokens
    assert cached["prefix_cache"]["hit_tokens"] == 3 * 64 + 4 * 64
    assert "pt/pt_nocache" in entry["ratios"] and plain.get("prefix_cache") is None
    # The step timeline: every prompt token not found in the cache is prefilled once, every later token decoded once
    for record, computed in ((cached, prompt_tokens - cached["prefix_cache"]["hit_tokens"]), (plain, prompt_tokens)):
        kinds = record["step_trace"]["by_kind"].values()
        assert sum(k["prefill_tokens"] for k in kinds) == computed
        assert sum(k["decode_rows"] for k in kinds) == 8 * (3 - 1)
        assert sum(k["steps"] for k in kinds) == record["step_trace"]["steps"] > 0
