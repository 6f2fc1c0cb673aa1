"""The pt engine's CPU fast path: linears over oneDNN-prepacked weights (checked against nn.Linear) and one OpenMP
pool (the loading thread's workers are released before the engine thread takes over). Speed is measured in
benchmarks/throughput.py --workload cpu; these tests check what the switch does and that results stay the same."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch import nn

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.engines.pt import cpu_linears
from swiftops.engines.pt.openmp_pool import release_calling_thread_pool

pytestmark = pytest.mark.skipif(not cpu_linears.available(), reason="this torch build has no oneDNN linear")


def _stack() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.SiLU(), nn.Linear(96, 64, bias=False), nn.Linear(64, 300))


def test_packed_linears_give_nn_linear_results_for_any_row_count():
    model = _stack().eval()
    dense = _stack().eval()
    assert cpu_linears.pack_linears(model) == 3
    assert all(hasattr(m, "packed_weight") for m in model if isinstance(m, nn.Linear))
    with torch.inference_mode():
        for shape in ((1, 64), (16, 64), (3, 37, 64), (0, 64)):
            x = torch.randn(*shape)
            got, want = model(x), dense(x)
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_packed_linears_leave_the_dense_weights_and_autograd_alone():
    model = _stack()
    cpu_linears.pack_linears(model)
    assert all(m.weight.layout == torch.strided and m.weight.requires_grad for m in model if isinstance(m, nn.Linear))
    x = torch.randn(4, 64, requires_grad=True)
    model(x).sum().backward()  # with grad enabled the dense forward runs: gradients reach the weights
    assert model[0].weight.grad is not None and x.grad is not None


def test_no_packing_when_the_copies_would_not_fit(monkeypatch):
    monkeypatch.setattr(cpu_linears, "_MEMORY_SHARE", 0.0)
    model = _stack()
    assert cpu_linears.pack_linears(model) == 0
    assert not any(hasattr(m, "packed_weight") for m in model)


def test_float16_and_bfloat16_linears_are_not_packed():
    model = _stack().to(torch.bfloat16)
    assert cpu_linears.pack_linears(model) == 0


def test_pt_engine_on_cpu_packs_its_linears_and_answers_as_the_dense_model(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=4, torch_dtype="float32")
    try:
        assert engine.fused_kernels["packed_linear"] > 0
        prompts = [InferRequest(prompt=[5 + i] * (8 + i)) for i in range(4)]
        config = RequestConfig(max_tokens=12, temperature=0, ignore_eos=True)
        packed = [r.choices[0].message.content for r in engine.infer(prompts, config, use_tqdm=False)]
        mlps = [m for m in engine.model.modules() if hasattr(m, "packed_gate_up")]
        qkvs = {id(m.fused_qkv): m.fused_qkv for m in engine.model.modules() if hasattr(m, "fused_qkv")}
        assert qkvs and all(f.project != f.dense for f in qkvs.values())  # packed
        assert mlps and all(m.gate_proj.weight.data_ptr() == m.gate_up_weight.data_ptr() for m in mlps)
        for module in engine.model.modules():  # back to the modules' own forwards, same engine and cache
            if hasattr(module, "packed_weight") or hasattr(module, "packed_gate_up"):
                del module.forward
            if hasattr(module, "fused_qkv"):  # the [q; k; v] GEMM over its dense weight
                module.fused_qkv.project = module.fused_qkv.dense
        dense = [r.choices[0].message.content for r in engine.infer(prompts, config, use_tqdm=False)]
    finally:
        engine.close()
    assert packed == dense


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_releasing_a_threads_openmp_pool_ends_its_workers_and_ops_still_run():
    seen: dict[str, object] = {}

    def work() -> None:
        torch.set_num_threads(2)  # the test session runs one intra-op thread, which starts no workers
        torch.ones(4_000_000).sum()  # a parallel region: this thread's pool gets its workers
        seen["before"] = _tasks()
        seen["released"] = release_calling_thread_pool()
        deadline = time.monotonic() + 5
        while _tasks() >= seen["before"] and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["after"] = _tasks()
        seen["sum"] = float(torch.ones(4_000_000).sum())  # the pool comes back when needed

    threads = torch.get_num_threads()
    thread = threading.Thread(target=work)
    try:
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(threads)
    assert seen["released"] is True
    assert seen["after"] < seen["before"]
    assert seen["sum"] == 4_000_000.0
