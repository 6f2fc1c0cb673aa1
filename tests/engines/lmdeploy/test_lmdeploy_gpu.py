"""A real LmdeployEngine run on a GPU (LMDeploy's PyTorch engine, tiny random model): the GPU machine's check.

Skipped without CUDA (the `gpu` marker) and where lmdeploy is not importable. On the GPU machine: carry the
wheels listed in docs/backends.md, `pip install --no-deps` them, then `python3 -m pytest -m gpu
tests/engines/lmdeploy/test_lmdeploy_gpu.py`.
"""
from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("lmdeploy", reason="lmdeploy is not installed in this interpreter")

from swiftops.protocol import ChatCompletionResponse, InferRequest, RequestConfig  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from swiftops.engines.lmdeploy import LmdeployEngine

    built = LmdeployEngine(str(tiny_model_dir), lmdeploy_backend="pytorch", torch_dtype="float16",
                           max_model_len=256, max_batch_size=4, cache_max_entry_count=0.05)
    yield built
    built.close()


def _req(text: str) -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": text}])


def test_batch_of_requests(engine):
    results = engine.infer([_req("one"), _req("two"), _req("three")],
                           RequestConfig(max_tokens=8, temperature=0, ignore_eos=True), use_tqdm=False)
    assert all(isinstance(r, ChatCompletionResponse) for r in results)
    assert all(r.usage.completion_tokens == 8 and r.choices[0].finish_reason == "length" for r in results)
    assert engine.lmdeploy_backend == "pytorch"


def test_greedy_is_repeatable_and_stream_matches(engine):
    config = RequestConfig(max_tokens=8, temperature=0, ignore_eos=True)
    first = asyncio.run(engine.infer_async(_req("hello"), config))
    again = asyncio.run(engine.infer_async(_req("hello"), config))
    assert first.choices[0].message.content == again.choices[0].message.content

    async def stream():
        return [c async for c in await engine.infer_async(_req("hello"), config.model_copy(update={"stream": True}))]

    chunks = asyncio.run(stream())
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage == first.usage
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == first.choices[0].message.content


def test_n_seeded_choices_and_logprobs(engine):
    resp = asyncio.run(engine.infer_async(_req("hi"), RequestConfig(n=2, max_tokens=4, temperature=1.0, seed=1,
                                                                      logprobs=True, top_logprobs=2, ignore_eos=True)))
    assert [c.index for c in resp.choices] == [0, 1] and resp.usage.completion_tokens == 8
    assert all(len(c.logprobs.content) == 4 for c in resp.choices)


def test_cancel_frees_the_session(engine):
    async def scenario():
        task = asyncio.ensure_future(engine.infer_async(_req("long"), RequestConfig(max_tokens=200, ignore_eos=True)))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if engine.num_running == 0:
                return True
            await asyncio.sleep(0.05)
        return False

    assert asyncio.run(scenario())


def _settled(engine) -> bool:
    import time

    pool = engine._engine.session_mgr.request_handle_pool
    for _ in range(200):
        if engine.num_running == 0 and pool.num_dispatched == 0:
            return True
        time.sleep(0.05)
    return False


def test_the_engine_instance_answers_as_lmdeploys_generate(engine):
    """Token-id prompts run on the PyTorch engine's instance (token_stream.py): the same greedy text and counts
    as LMDeploy's own AsyncEngine.generate on the same prompt, whole and streamed."""
    config = RequestConfig(max_tokens=12, temperature=0, ignore_eos=True)
    via_instance = engine.infer([_req("compare")], config, use_tqdm=False)[0]

    async def stream():
        return [c async for c in await engine.infer_async(_req("compare"), config.model_copy(update={"stream": True}))]

    streamed = "".join(c.choices[0].delta.content or "" for c in asyncio.run(stream()))
    engine._token_ids_to_instance = False
    try:
        via_generate = engine.infer([_req("compare")], config, use_tqdm=False)[0]
    finally:
        engine._token_ids_to_instance = True
    assert via_instance.choices[0].message.content == via_generate.choices[0].message.content == streamed
    assert via_instance.usage == via_generate.usage and via_instance.usage.completion_tokens == 12
    assert _settled(engine)


def test_a_stop_string_cancels_the_instance_request(engine):
    config = RequestConfig(max_tokens=16, temperature=0, ignore_eos=True)
    text = engine.infer([_req("stop here")], config, use_tqdm=False)[0].choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if not stop.strip():
        pytest.skip(f"the greedy text has no visible characters to stop at: {text!r}")
    resp = engine.infer([_req("stop here")], config.model_copy(update={"stop": [stop]}), use_tqdm=False)[0]
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.content == text[:text.index(stop)]
    assert _settled(engine)
