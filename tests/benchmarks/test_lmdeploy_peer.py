"""benchmarks/lmdeploy_peer.py against LMDeploy's real AsyncEngine (preprocess, generate, session manager,
request-handle pool, detokenization), with only its PyTorch `Engine` replaced: that class needs CUDA.

Runs where lmdeploy imports: with the GPU kit on any python that has torch and transformers
(`PYTHONPATH=$PWD/.gpukit/boot python -m pytest tests/benchmarks/test_lmdeploy_peer.py`, after unpacking the
kit; it passed on CPU with torch 2.13, transformers 5.17 and the kit built for Python 3.11) or in
.venv-contract-lmdeploy. Skipped in `make test`, whose venv has no lmdeploy, the only condition it skips on.
"""
from __future__ import annotations

import asyncio
import json

import pytest

lmdeploy = pytest.importorskip("lmdeploy")
from lmdeploy.messages import EngineOutput, ResponseType  # noqa: E402
from lmdeploy.serve.core.async_engine import AsyncEngine  # noqa: E402

from benchmarks import lmdeploy_peer  # noqa: E402
from benchmarks.bench_model import build_model  # noqa: E402


class FakePytorchEngine:
    """Stands in for lmdeploy.pytorch.engine.Engine: one new token per step, as its instances stream them."""

    def __init__(self, engine_config: object) -> None:
        self.engine_config = engine_config
        self.in_flight = 0
        self.max_in_flight = 0
        self.gen_configs: list[object] = []
        self.started = False
        self.closed = False

    def create_instance(self) -> "FakeInstance":
        return FakeInstance(self)

    def start_loop(self) -> bool:
        self.started = True
        return True

    def close(self) -> None:
        self.closed = True


class FakeInstance:
    def __init__(self, engine: FakePytorchEngine) -> None:
        self.engine = engine

    async def async_stream_infer(self, session_id: int, input_ids: list[int], gen_config: object = None, **_: object):
        self.engine.gen_configs.append(gen_config)
        self.engine.in_flight += 1
        self.engine.max_in_flight = max(self.engine.max_in_flight, self.engine.in_flight)
        try:
            for step in range(gen_config.max_new_tokens):
                await asyncio.sleep(0)  # every request in flight gets a turn, as in a batched step
                last = step == gen_config.max_new_tokens - 1
                yield EngineOutput(ResponseType.FINISH if last else ResponseType.SUCCESS, [10 + step % 50])
        finally:
            self.engine.in_flight -= 1

    async def async_cancel(self, session_id: int) -> None:
        pass


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory):
    return build_model(tmp_path_factory.mktemp("bench") / "m", "30m", "float32", device="cpu")


def _prompts(path, sets: dict, output_len: int) -> str:
    path.write_text(json.dumps({"sets": sets, "output_len": output_len, "warmup": [[11, 12, 13]],
                                "warmup_output_len": 2}))
    return str(path)


def test_peer_drives_async_engine_on_token_ids_all_at_once(tmp_path, model_path, monkeypatch) -> None:
    engines: list[FakePytorchEngine] = []

    def build(self, model_path, backend_config=None, **_):
        engines.append(FakePytorchEngine(backend_config))
        return engines[-1]

    monkeypatch.setattr(AsyncEngine, "_build_pytorch", build)
    main = [[20 + i, 21, 22, 23] for i in range(12)]
    prompts = _prompts(tmp_path / "p.json", {"main": main, "b1": [[30, 31]]}, output_len=7)
    out = tmp_path / "r.json"
    status = lmdeploy_peer.run(["--model", str(model_path), "--prompts", prompts, "--out", str(out),
                                "--max_batch_size", "256", "--dtype", "bfloat16", "--session_len", "20000",
                                "--also_instance"])
    record = json.loads(out.read_text())
    assert status == 0, record.get("errors")
    assert record["ok"] is True
    assert record["runs"]["main"]["completion_tokens"] == 12 * 7
    assert record["runs"]["b1"]["completion_tokens"] == 7
    assert record["runs"]["main_instance"]["completion_tokens"] == 12 * 7
    assert record["effective"]["max_batch_size"] == 256
    assert record["effective"]["session_len"] == 20000 == record["effective"]["max_model_len"]
    assert record["engine_config_kwargs"] == {"max_batch_size": 256, "dtype": "bfloat16", "session_len": 20000}
    engine = engines[0]
    assert engine.started and engine.closed
    assert engine.max_in_flight == 12  # the whole set was submitted at once, so LMDeploy can batch it
    for gen in engine.gen_configs:  # greedy, EOS ignored, exact length: what reached LMDeploy's engine
        assert gen.ignore_eos is True and gen.top_k == 1 and gen.max_new_tokens in (2, 7)


def test_peer_records_a_failed_engine_build(tmp_path, model_path, monkeypatch) -> None:
    def build(self, model_path, backend_config=None, **_):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(AsyncEngine, "_build_pytorch", build)
    out = tmp_path / "r.json"
    status = lmdeploy_peer.run(["--model", str(model_path), "--prompts",
                                _prompts(tmp_path / "p.json", {"main": [[1, 2]]}, 3), "--out", str(out)])
    record = json.loads(out.read_text())
    assert status == 1
    assert record["ok"] is False
    assert "CUDA out of memory (simulated)" in record["errors"][0]["error"]
