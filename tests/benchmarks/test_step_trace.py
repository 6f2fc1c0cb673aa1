"""The step timeline benchmarks use (benchmarks/step_trace.py), on the tiny model: what it counts is what ran."""
from __future__ import annotations

from benchmarks.step_trace import StepTrace
from swiftops import InferRequest, PtEngine, RequestConfig


def test_the_trace_counts_every_prefill_token_and_decode_row(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=4, max_model_len=256)
    try:
        trace = StepTrace(engine)
        engine.infer([InferRequest(prompt=[5, 6, 7])], RequestConfig(max_tokens=2, temperature=0))  # not traced
        trace.start()
        prompts = [[10 + i] * (20 + i) for i in range(3)]
        config = RequestConfig(max_tokens=5, temperature=0, ignore_eos=True)
        engine.infer([InferRequest(prompt=p) for p in prompts], config)
        summary = trace.stop()
    finally:
        engine.close()
    kinds = summary["by_kind"]
    assert sum(k["prefill_tokens"] for k in kinds.values()) == sum(map(len, prompts))
    assert sum(k["decode_rows"] for k in kinds.values()) == 3 * (5 - 1)
    assert summary["steps"] == sum(k["steps"] for k in kinds.values())
    assert all(k["seconds"] >= 0 and k["mean_ms"] >= 0 for k in kinds.values())
    assert any(name.startswith("mixed<=") for name in kinds) and summary["traced_s"] > 0
    assert summary["mixed_graph_replays"] is None  # CPU: no CUDA graphs, mixed steps run eagerly


def test_phases_split_each_step_into_the_engine_threads_host_work(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=4, max_model_len=256)
    try:
        trace = StepTrace(engine, phases=True)
        trace.start()
        config = RequestConfig(max_tokens=6, temperature=0, ignore_eos=True)
        engine.infer([InferRequest(prompt=[10 + i] * (20 + i)) for i in range(3)], config)
        summary = trace.stop()
        after = StepTrace(engine, phases=True)  # stopped traces record nothing more
        engine.infer([InferRequest(prompt=[9] * 8)], config)
    finally:
        engine.close()
    assert len(trace.phases) == summary["steps"] == len(trace.gpu)
    kinds = summary["by_kind"]
    for kind in kinds.values():
        host = kind["host_ms"]
        assert set(host) == {"launch", "post", "flush", "plan", "admit", "stage"}
        # admit and stage are parts of plan and launch: the top-level phases fit in the step's interval
        assert 0 <= host["launch"] + host["post"] + host["flush"] + host["plan"] <= kind["mean_ms"] + 1e-3
        assert host["admit"] <= host["plan"] + 1e-3 and host["stage"] <= host["launch"] + 1e-3
        assert "gpu_ms" not in kind  # CPU: no CUDA events
    # every step is launched through the core, so each has launch time; tokens are handed over in some interval
    assert all(phases.get("launch", 0) > 0 for phases in trace.phases)
    assert any(phases.get("post", 0) > 0 for phases in trace.phases)
    assert all(phases.get("stage", 0) > 0 for phases in trace.phases)  # every step ran through the runner
    assert after.events == [] and after.phases == []
