"""The pt engine in its own process (EngineProcessClient): the same answers as the in-process PtEngine for the
same requests (text, stop strings, n, logprobs, streams), LoRA adapters by name and by path across the boundary,
request errors with their own status, aborts that free the engine, and a dead engine process failing requests
in flight at once (never a hang)."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.engines.process.client import EngineProcessClient, runs_in_engine_process
from swiftops.protocol import AdapterRequest, EngineError, ModelNotFoundError, PromptTooLongError
from swiftops.protocol.settings import EngineSettings, ModelSettings

GREEDY = RequestConfig(max_tokens=12, temperature=0)


def _ask(text: str) -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory, make_lora_adapter):
    root = tmp_path_factory.mktemp("process-loras")
    return {name: str(make_lora_adapter(tiny_model_dir, root / name, seed))
            for seed, name in enumerate(["sql", "poem"], start=1)}


@pytest.fixture(scope="module")
def local(tiny_model_dir, adapters):
    engine = PtEngine(str(tiny_model_dir), adapters=adapters, max_batch_size=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def remote(tiny_model_dir, adapters):
    engine = EngineProcessClient(ModelSettings(model=str(tiny_model_dir), adapters={"sql": adapters["sql"]}),
                                 EngineSettings(max_batch_size=8))
    yield engine
    engine.close()


def _texts(engine, requests, config):
    return [c.message.content for r in engine.infer(requests, config, use_tqdm=False) for c in r.choices]


def _streamed(engine, request, config):
    async def collect():
        parts: dict[int, str] = {}
        async for chunk in await engine.infer_async(request, config.model_copy(update={"stream": True})):
            for c in chunk.choices:
                parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
        return [parts[i] for i in sorted(parts)]
    return asyncio.run(collect())


def test_a_text_model_is_served_from_an_engine_process(tiny_model_dir, tiny_vlm_dir):
    pt = EngineSettings()
    assert runs_in_engine_process(ModelSettings(model=str(tiny_model_dir)), pt)
    assert not runs_in_engine_process(ModelSettings(model=str(tiny_vlm_dir)), pt)  # media stay beside the processor
    assert not runs_in_engine_process(ModelSettings(model=str(tiny_model_dir)), EngineSettings(infer_backend="vllm"))


def test_the_engine_runs_in_another_process(remote):
    assert remote.pid is not None and remote.pid != os.getpid()
    assert remote.runner_name == "paged" and remote.max_model_len > 0 and remote.health_error() is None


@pytest.mark.parametrize("config", [
    GREEDY,
    RequestConfig(max_tokens=30, temperature=0, stop=["e", "the"]),  # stop strings: matched in this process
    RequestConfig(max_tokens=10, temperature=0.9, seed=7, n=3),  # seeded choices: seed + i, as in-process
])
def test_the_same_answers_as_the_in_process_engine(local, remote, config):
    requests = [_ask("hello"), _ask("write a poem about the sea"), InferRequest(prompt="The capital of France is")]
    assert _texts(remote, requests, config) == _texts(local, requests, config)
    assert _streamed(remote, requests[1], config) == _streamed(local, requests[1], config)


def test_usage_finish_reasons_and_logprobs_match(local, remote):
    config = RequestConfig(max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stop=["ing"])
    mine, theirs = (engine.infer([_ask("count to three")], config, use_tqdm=False)[0] for engine in (remote, local))
    assert mine.usage == theirs.usage
    assert [c.finish_reason for c in mine.choices] == [c.finish_reason for c in theirs.choices]
    assert mine.choices[0].logprobs.model_dump() == theirs.choices[0].logprobs.model_dump()


def test_beam_search_runs_whole_in_the_engine_process(local, remote):
    # Before any adapter request: the pt engine's beam search (transformers' generate beside the batch) runs
    # with whatever LoRA slot state the last batch left, in-process too (reported; not this suite's subject).
    config = RequestConfig(max_tokens=6, temperature=0, num_beams=2, n=2)
    assert _texts(remote, [_ask("hello")], config) == _texts(local, [_ask("hello")], config)


def test_lora_adapters_by_name_and_by_path(local, remote, adapters):
    by_name = AdapterRequest(name="sql")
    assert asyncio.run(remote.infer_async(_ask("select"), GREEDY, adapter_request=by_name)).choices[0].message.content \
        == asyncio.run(local.infer_async(_ask("select"), GREEDY, adapter_request=by_name)).choices[0].message.content
    by_path = AdapterRequest(name="poem", path=adapters["poem"])  # not loaded at start: loaded there on first use
    remote_poem = asyncio.run(remote.infer_async(_ask("a poem"), GREEDY, adapter_request=by_path))
    local_poem = asyncio.run(local.infer_async(_ask("a poem"), GREEDY, adapter_request=AdapterRequest(name="poem")))
    base = asyncio.run(remote.infer_async(_ask("a poem"), GREEDY))
    assert remote_poem.choices[0].message.content == local_poem.choices[0].message.content
    assert remote_poem.choices[0].message.content != base.choices[0].message.content  # the adapter changed it
    assert "poem" in remote.adapter_names
    with pytest.raises(ModelNotFoundError):  # an unknown name with no path: the engine process's 404, here
        asyncio.run(remote.infer_async(_ask("x"), GREEDY, adapter_request=AdapterRequest(name="nope")))


def test_prefix_cache_counters_cross_to_the_server(remote):
    """/metrics of a two-process server reads the engine process's prefix-cache counters."""
    before = remote.prefix_cache_stats() or (0, 0)
    prompt = InferRequest(prompt=list(range(5, 5 + 70)))  # over four 16-token blocks
    remote.infer([prompt], GREEDY, use_tqdm=False)
    remote.infer([prompt], GREEDY, use_tqdm=False)  # the second finds the first's full blocks
    queried, hits = remote.prefix_cache_stats()
    assert queried - before[0] >= 2 * 69
    assert hits - before[1] >= 64


def test_request_errors_keep_their_class(remote):
    with pytest.raises(PromptTooLongError):
        asyncio.run(remote.infer_async(InferRequest(prompt=[1] * (remote.max_model_len + 1)), GREEDY))


def test_a_reader_that_leaves_aborts_the_generation_in_the_engine_process(remote):
    async def leave_early():
        stream = await remote.infer_async(_ask("go on"), RequestConfig(max_tokens=400, ignore_eos=True, stream=True))
        async for _ in stream:
            break
        await stream.aclose()
    asyncio.run(leave_early())
    deadline = time.monotonic() + 10
    while remote.num_running and time.monotonic() < deadline:  # the count comes back over the boundary
        time.sleep(0.05)
    assert remote.num_running == 0 and remote.num_waiting == 0


def test_a_dead_engine_process_fails_requests_in_flight_and_later_ones(tiny_model_dir):
    engine = EngineProcessClient(ModelSettings(model=str(tiny_model_dir)), EngineSettings(max_batch_size=4))
    deaths: list[str] = []
    engine.on_death(deaths.append)
    try:
        async def scenario():
            stream = await engine.infer_async(_ask("go on"), RequestConfig(max_tokens=400, ignore_eos=True,
                                                                           stream=True))
            os.kill(engine.pid, signal.SIGKILL)  # at once: a fast engine could finish 400 tokens before a read
            started = time.monotonic()
            with pytest.raises(EngineError, match="engine process exited"):
                async for _ in stream:
                    pass
            return time.monotonic() - started
        assert asyncio.run(scenario()) < 5
        assert deaths and "exited" in engine.health_error()
        with pytest.raises(EngineError):
            asyncio.run(engine.infer_async(_ask("hi"), GREEDY))
    finally:
        engine.close()


def test_a_gpu_engine_process_keeps_one_cpu_thread(monkeypatch):
    import types

    import torch

    from swiftops.engines.process.engine_main import _quiet_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        _quiet_cpu_threads(types.SimpleNamespace(device=torch.device("cpu")))
        assert torch.get_num_threads() == before  # a CPU engine computes on those threads
        _quiet_cpu_threads(types.SimpleNamespace(device=torch.device("cuda", 0)))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        _quiet_cpu_threads(types.SimpleNamespace(device=torch.device("cuda", 0)))
        assert torch.get_num_threads() == before  # the operator's OMP_NUM_THREADS wins
    finally:
        torch.set_num_threads(before)
