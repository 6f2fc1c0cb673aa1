"""benchmarks/throughput.py on CPU at a tiny scale: every engine in its own process, the JSON kept up to date,
and a failed or hung engine recorded without stopping the others (the GPU runs depend on it)."""
from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import throughput
from benchmarks.throughput import Benchmark, EngineSpec, Workload, ratios


def _args(tmp_path, model_dir, **overrides) -> argparse.Namespace:
    values = dict(out=str(tmp_path / "out.json"), model_dir=str(model_dir), engines=None,
                  deadline_s=None, engine_timeout_s=None, pt_kwargs=None, lmdeploy_instance=False,
                  msswift_python=None, rounds=1)
    values.update(overrides)
    return argparse.Namespace(**values)


def _tiny(engines: tuple[EngineSpec, ...], timeout: int = 180) -> Workload:
    return Workload("tiny", "30m", "float32", requests=3, prompt_len=0, output_len=3, batch1=False,
                    engines=engines, chat=True, warmup_requests=1, warmup_output_len=2, engine_timeout_s=timeout,
                    device="cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("models")  # the 30M model is built by the first test and reused after


@pytest.fixture(autouse=True)
def _torch_on_one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the engine processes share a small machine with the suite


def test_engines_run_in_turn_and_a_failing_one_is_recorded(tmp_path, model_dir) -> None:
    bench = Benchmark(_args(tmp_path, model_dir))
    engines = (EngineSpec("lmdeploy", "lmdeploy"),  # not installed in this venv: fails, recorded
               EngineSpec("pt", "pt", {"max_batch_size": 2, "max_model_len": -1}))  # still runs after it
    bench.run_workload(_tiny(engines))
    doc = json.loads((tmp_path / "out.json").read_text())
    entry = doc["workloads"]["tiny"]
    prompts = entry["prompts"]
    assert prompts["requests"] == 3 and 17 <= prompts["prompt_tokens_min"] <= prompts["prompt_tokens_max"] <= 23
    pt, lmd = entry["engines"]["pt"], entry["engines"]["lmdeploy"]
    assert pt["ok"] is True, pt.get("errors")
    assert pt["runs"]["main"]["completion_tokens"] == 9 == pt["runs"]["main"]["expected_tokens"]
    assert pt["runs"]["main"]["tok_s"] > 0 and pt["startup_s"] > 0 and pt["warmup_s"] > 0
    assert pt["effective"]["max_batch_size"] == 2 and pt["effective"]["runner_name"]
    assert pt["effective"]["max_model_len"] == prompts["prompt_tokens_max"] + 3  # prompt + output
    assert pt["engine_kwargs"] == {"max_batch_size": 2, "max_model_len": prompts["prompt_tokens_max"] + 3,
                                   "torch_dtype": "float32"}
    assert lmd["ok"] is False and lmd["returncode"] == 1
    assert "lmdeploy" in lmd["errors"][-1]["error"]
    assert entry["ratios"] == {}  # nothing to compare pt with
    assert doc["host"]["torch"] and doc["command"]
    model = entry["model"]
    assert 26e6 < model["parameters"] < 28e6 and model["identity"]["shape"] == "30m"


def test_a_built_model_is_reused(tmp_path) -> None:
    from benchmarks.bench_model import build_model
    path = build_model(tmp_path / "m", "30m", "float32", device="cpu")
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_model(tmp_path / "m", "30m", "float32", device="cpu") == path
    assert weights.stat().st_mtime_ns == stamp  # not written again
    (path / "bench_model.json").unlink()  # an unfinished build (no marker) is built again
    build_model(tmp_path / "m", "30m", "float32", device="cpu")
    assert weights.stat().st_mtime_ns != stamp


def test_a_hung_engine_is_killed_and_the_json_says_so(tmp_path, model_dir) -> None:
    bench = Benchmark(_args(tmp_path, model_dir, engine_timeout_s=2))  # the engine process cannot even import torch in 2 s
    bench.run_workload(_tiny((EngineSpec("pt", "pt", {"max_model_len": -1}),)))
    record = json.loads((tmp_path / "out.json").read_text())["workloads"]["tiny"]["engines"]["pt"]
    assert record["timed_out"] is True and record["ok"] is False
    assert record["wall_s"] < 30
    assert "timed out after 2 s" in record["errors"][-1]["error"]
    assert "--engine_kwargs" in record["command"] and '"max_model_len": ' in record["command"]


def test_ratios_only_compare_sets_both_engines_finished() -> None:
    ok = {"runs": {"main": {"ok": True, "tok_s": 300.0}, "b1": {"ok": True, "tok_s": 10.0}}}
    peer = {"runs": {"main": {"ok": True, "tok_s": 200.0}, "b1": {"ok": False, "tok_s": 99.0}}}
    assert ratios({"pt": ok, "lmdeploy": peer}) == {"pt/lmdeploy": 1.5}


def test_rounds_compare_medians() -> None:
    from benchmarks.throughput import add_round
    record = None
    for tok_s, ok in ((100.0, True), (40.0, True), (999.0, False), (120.0, True)):
        new = {"runs": {"main": {"tok_s": tok_s, "ok": ok}}}
        add_round(new, record)
        record = new
    assert [r["main"] for r in record["rounds"]] == [100.0, 40.0, None, 120.0]
    assert record["runs"]["main"]["tok_s_median"] == 100.0
    assert ratios({"pt": record, "hf": {"runs": {"main": {"ok": True, "tok_s": 50.0}}}}) == {"pt/hf": 2.0}


def test_criteria_read_the_ratios_of_their_workload() -> None:
    from benchmarks.throughput import criteria
    rows = criteria("small", {}, {"pt/lmdeploy": 1.2, "pt/pt_tuned": 0.85})
    assert [(r["ratio"], r["holds"]) for r in rows] == [("pt/lmdeploy", True), ("pt/lmdeploy (b1)", None),
                                                        ("pt/pt_tuned", False)]
    eager = {"pt": {"ok": True, "effective": {"uses_cuda_graphs": False}}}
    assert criteria("long", eager, {"pt/lmdeploy": 0.95})[0]["holds"] is False  # (d) wants CUDA graphs too
    graphs = {"pt": {"ok": True, "effective": {"uses_cuda_graphs": True}}}
    assert criteria("long", graphs, {"pt/lmdeploy": 0.95})[0]["holds"] is True


def test_every_workload_is_defined_as_the_issue_asks() -> None:
    small, large, long, cpu = (throughput.WORKLOADS[k] for k in ("small", "large", "long", "cpu"))
    assert (small.shape, small.requests, small.prompt_len, small.output_len, small.batch1) == ("0.5b", 256, 128, 256, True)
    assert (large.shape, large.requests, large.prompt_len, large.output_len, large.batch1) == ("7b", 256, 512, 256, True)
    assert (long.shape, long.requests, long.prompt_len, long.output_len) == ("7b", 16, 16384, 256)
    assert long.lmdeploy_session_len == 32768 >= 16384 + 256
    assert [e.label for e in small.engines] == ["pt", "lmdeploy", "pt_tuned"]
    assert small.engines[0].pt_kwargs == {} and small.engines[2].pt_kwargs == {"max_model_len": 384}
    assert large.engines[2].pt_kwargs == {"max_model_len": 768}
    assert [e.label for e in long.engines] == ["pt", "lmdeploy"] and long.engines[0].pt_kwargs == {}
    assert (cpu.shape, cpu.dtype, cpu.requests, cpu.output_len, cpu.chat) == ("30m", "float32", 64, 64, True)


def test_each_round_starts_one_engine_later() -> None:
    from benchmarks.throughput import round_order
    specs = ["pt", "hf", "pt_tuned"]
    orders = [round_order(specs, i) for i in range(4)]
    assert orders == [["pt", "hf", "pt_tuned"], ["hf", "pt_tuned", "pt"], ["pt_tuned", "pt", "hf"], specs]
    assert round_order([], 3) == []
