"""The engine contract every backend honours: same response types, streaming shape, n, stop, errors, abort.

Runs against the pt engine (real, tiny model) and against VllmEngine / LmdeployEngine with their library
replaced only at its outermost surface (tests/engines/{vllm,lmdeploy}/fake_lib), built through
`build_engine` exactly as the CLI builds them. Text differs per backend (a random model vs a scripted
fake), so the checks compare each backend with itself: stream vs whole, stop vs no stop.
"""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from swiftops.engines.factory import build_engine
from swiftops.protocol import (AdapterRequest, ChatCompletionResponse, ChatCompletionStreamResponse, InferRequest,
                               ModelNotFoundError, PromptTooLongError, RequestConfig)
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

ENGINES_TESTS = Path(__file__).resolve().parents[1] / "engines"
FAKE_LIBS = {"vllm": ENGINES_TESTS / "vllm" / "fake_lib", "lmdeploy": ENGINES_TESTS / "lmdeploy" / "fake_lib"}


@contextlib.contextmanager
def fake_library(name: str) -> Iterator[None]:
    """Put the fake `name` package first on sys.path (and only it in sys.modules) for the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(FAKE_LIBS[name]))
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            mp.delitem(sys.modules, module)
        try:
            yield
        finally:
            for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[module]


@pytest.fixture(scope="module", params=["pt", "vllm", "lmdeploy"])
def engine(request, tiny_model_dir):
    backend = request.param
    context = fake_library(backend) if backend in FAKE_LIBS else contextlib.nullcontext()
    with context:
        built = build_engine(ModelSettings(model=str(tiny_model_dir)),
                             EngineSettings(infer_backend=backend, max_batch_size=8), GenerationSettings())
        yield built
        built.close()


def _req(text: str = "Tell me something.") -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": text}])


def _run(coro):
    return asyncio.run(coro)


async def _stream(engine, request, config):
    return [chunk async for chunk in await engine.infer_async(request, config)]


def test_whole_response_shape(engine):
    resp = _run(engine.infer_async(_req(), RequestConfig(max_tokens=6, temperature=0)))
    assert isinstance(resp, ChatCompletionResponse)
    assert resp.model == engine.model_name and len(resp.choices) == 1
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0 and 0 < resp.usage.completion_tokens <= 6
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_stream_has_role_first_usage_last_and_the_same_text(engine):
    config = RequestConfig(max_tokens=6, temperature=0)
    whole = _run(engine.infer_async(_req(), config))
    chunks = _run(_stream(engine, _req(), config.model_copy(update={"stream": True})))
    assert all(isinstance(c, ChatCompletionStreamResponse) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage == whole.usage and chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_ends_with_length(engine):
    resp = _run(engine.infer_async(_req(), RequestConfig(max_tokens=3, temperature=0, ignore_eos=True)))
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 3


def test_n_choices_are_indexed_and_counted(engine):
    resp = _run(engine.infer_async(_req(), RequestConfig(n=3, max_tokens=4, temperature=1.0, seed=3)))
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.usage.completion_tokens <= 12 and resp.usage.completion_tokens >= 3
    chunks = _run(_stream(engine, _req(), RequestConfig(n=2, max_tokens=4, temperature=0, stream=True)))
    firsts = {}
    for c in chunks:
        firsts.setdefault(c.choices[0].index, c.choices[0].delta.role)
    assert firsts == {0: "assistant", 1: "assistant"} and chunks[-1].usage is not None


def test_stop_string_cuts_the_text_before_it(engine):
    config = RequestConfig(max_tokens=8, temperature=0, ignore_eos=True)
    text = _run(engine.infer_async(_req(), config)).choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if not stop.strip():
        pytest.skip(f"the greedy text has no visible characters to stop at: {text!r}")
    resp = _run(engine.infer_async(_req(), config.model_copy(update={"stop": [stop]})))
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == text[:text.index(stop)]


def test_logprobs_one_entry_per_token_with_alternatives(engine):
    resp = _run(engine.infer_async(_req(), RequestConfig(max_tokens=4, temperature=0, logprobs=True, top_logprobs=2,
                                                         ignore_eos=True)))
    entries = resp.choices[0].logprobs.content
    assert len(entries) == resp.usage.completion_tokens == 4
    assert all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in entries)


def test_prompt_too_long_is_a_400(engine):
    with pytest.raises(PromptTooLongError) as info:
        _run(engine.infer_async(_req("hi " * (engine.max_model_len + 10)), RequestConfig(max_tokens=2)))
    assert info.value.status == 400


def test_unknown_adapter_is_a_404(engine):
    with pytest.raises(ModelNotFoundError) as info:
        _run(engine.infer_async(_req(), RequestConfig(max_tokens=2), adapter_request=AdapterRequest(name="nope")))
    assert info.value.status == 404


def test_cancelling_a_request_frees_its_slot(engine):
    async def scenario():
        task = asyncio.ensure_future(engine.infer_async(_req(), RequestConfig(max_tokens=200, ignore_eos=True)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stream = await engine.infer_async(_req(), RequestConfig(max_tokens=200, ignore_eos=True, stream=True))
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(200):
            if engine.num_running == 0:
                return True
            await asyncio.sleep(0.01)
        return False

    assert _run(scenario()), f"{engine.num_running} sequences still running after cancel"


def test_synchronous_batch_infer(engine):
    results = engine.infer([_req("one"), _req("two")], RequestConfig(max_tokens=3, temperature=0), use_tqdm=False)
    assert len(results) == 2 and all(isinstance(r, ChatCompletionResponse) for r in results)


def test_the_server_answers_the_openai_client_the_same_way(engine):
    """Switching backends changes one word: the official openai client sees the same shapes over HTTP."""
    import openai
    from starlette.testclient import TestClient

    from swiftops.protocol.settings import ServerSettings
    from swiftops.server.app import create_app

    messages = [{"role": "user", "content": "Tell me about the sea."}]
    with TestClient(create_app(engine, ServerSettings(served_model_name="chat"))) as http:
        deadline = time.monotonic() + 60
        while http.get("/ready").status_code != 200:  # the warm-up generation runs first (a 503 until then)
            assert time.monotonic() < deadline, http.get("/ready").text
            time.sleep(0.05)
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        assert [m.id for m in client.models.list().data] == ["chat", *engine.adapter_names]
        whole = client.chat.completions.create(model="chat", messages=messages, max_tokens=5, temperature=0)
        assert whole.model == "chat" and whole.object == "chat.completion"
        assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens <= 5
        chunks = list(client.chat.completions.create(model="chat", messages=messages, max_tokens=5, temperature=0,
                                                     stream=True, stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert [c for c in chunks if c.usage is not None][-1].usage.total_tokens == whole.usage.total_tokens
        completion = client.completions.create(model="chat", prompt="Once upon a time", max_tokens=3, temperature=0)
        assert completion.object == "text_completion" and completion.usage.completion_tokens <= 3
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=2)
