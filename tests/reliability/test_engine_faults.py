"""Engine faults: a request that makes the engine fail (an exception, an out-of-memory) fails alone with a 500;
its batchmates, concurrent requests and later ones are unaffected, and no batch slot or KV block leaks.

The faults come from the test-only hook swiftops/engines/pt/fault_injection.py (SWIFTOPS_FAULT_INJECT), and
from real inputs: a temperature below float32's range, and a prompt larger than a deliberately small KV cache.
"""
from __future__ import annotations

import asyncio

import httpx
import pytest

from swiftops import InferRequest, PtEngine, RequestConfig
from swiftops.protocol import EngineError
from tests.server_process import ServerProcess

CHAT = "/v1/chat/completions"
GREEDY = RequestConfig(max_tokens=8, temperature=0)


def _ask(text: str) -> InferRequest:
    return InferRequest(messages=[{"role": "user", "content": text}])


@pytest.fixture(scope="module")
def faulty_engine(tiny_model_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("SWIFTOPS_FAULT_INJECT", "error:@@boom@@,oom:@@oom@@")
    engine = PtEngine(str(tiny_model_dir), max_batch_size=8)
    mp.undo()
    yield engine
    engine.close()


@pytest.mark.parametrize("marker", ["@@boom@@", "@@oom@@"])
def test_the_batch_is_split_and_only_the_culprit_fails(faulty_engine, marker):
    good = [_ask(f"question {i}: name a colour") for i in range(5)]
    solo = [r.choices[0].message.content for r in faulty_engine.infer(good, GREEDY, use_tqdm=False)]
    free_before = faulty_engine.block_manager.num_free
    mixed = good[:2] + [_ask(f"please fail {marker} now")] + good[2:]
    results = faulty_engine.infer(mixed, GREEDY, use_tqdm=False, return_exceptions=True)
    culprit = results.pop(2)
    assert isinstance(culprit, EngineError) and culprit.status == 500
    assert ("out of memory" in culprit.message) == (marker == "@@oom@@"), culprit.message
    assert [r.choices[0].message.content for r in results] == solo  # batchmates: the same answers as alone
    assert faulty_engine.num_running == 0 and faulty_engine.num_waiting == 0
    assert faulty_engine.block_manager.num_free == free_before  # every block came back


def test_a_streamed_batchmate_fails_mid_stream_without_hurting_the_others(faulty_engine):
    """The culprit fails during decode too: a stream of good requests keeps going while it errors."""
    async def scenario():
        async def collect(request):
            chunks = []
            async for chunk in await faulty_engine.infer_async(request, RequestConfig(max_tokens=12, temperature=0,
                                                                                     stream=True)):
                chunks.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            return "".join(chunks)
        return await asyncio.gather(collect(_ask("one")), collect(_ask("two @@boom@@")), collect(_ask("three")),
                                    return_exceptions=True)

    one, culprit, three = asyncio.run(scenario())
    assert isinstance(culprit, EngineError)
    want = [r.choices[0].message.content for r in faulty_engine.infer([_ask("one"), _ask("three")],
                                                                      RequestConfig(max_tokens=12, temperature=0),
                                                                      use_tqdm=False)]
    assert [one, three] == want


def test_a_faulty_request_gets_500_and_concurrent_ones_200(rel_server, rel_api_key, markers, error_shape,
                                                           assert_still_serving, streamer):
    def body(text: str) -> dict:
        return {"messages": [{"role": "user", "content": text}], "max_tokens": 10, "temperature": 0}

    async def scenario():
        async with httpx.AsyncClient(base_url=rel_server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {rel_api_key}"}) as client:
            solo = (await client.post(CHAT, json=body("a normal question"))).json()
            tasks = [client.post(CHAT, json=body("a normal question")) for _ in range(6)]
            tasks += [streamer(client, body(f"stream {i}")) for i in range(6)]
            tasks += [client.post(CHAT, json=body(f"crash {markers['error']} please")),
                      client.post(CHAT, json=body(f"eat memory {markers['oom']} please")),
                      streamer(client, body(f"crash while streaming {markers['error']}"))]
            return solo, await asyncio.gather(*tasks)

    solo, results = asyncio.run(scenario())
    plain, streams, (crash, oom, crash_stream) = results[:6], results[6:12], results[12:]
    for response in plain:
        assert response.status_code == 200 and response.json()["choices"] == solo["choices"]
    assert all(status == 200 and usage["completion_tokens"] == 10 for status, _, usage in streams)
    for response in (crash, oom):
        assert response.status_code == 500
        error = error_shape(response)
        assert error["type"] == "internal_error"
    assert "out of memory" in oom.json()["error"]["message"]
    assert crash_stream[0] == 500  # the first chunk is awaited before the 200: the status tells the failure
    assert_still_serving()


def test_a_temperature_below_float32_range_is_served(rel_http, rel_server, rel_api_key):
    """A real input that used to fail its whole batch (logits / 1e-40 overflow to inf, then multinomial raised):
    a temperature that small is greedy."""
    body = {"messages": [{"role": "user", "content": "tiny temperature"}], "max_tokens": 6}

    async def scenario():
        async with httpx.AsyncClient(base_url=rel_server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {rel_api_key}"}) as client:
            return await asyncio.gather(client.post(CHAT, json={**body, "temperature": 0}),
                                        client.post(CHAT, json={**body, "temperature": 1e-40}),
                                        client.post(CHAT, json={**body, "temperature": 5e-324}))

    greedy, tiny, tinier = asyncio.run(scenario())
    assert greedy.status_code == tiny.status_code == tinier.status_code == 200, (tiny.text, tinier.text)
    want = greedy.json()["choices"][0]["message"]["content"]
    assert tiny.json()["choices"][0]["message"]["content"] == want
    assert tinier.json()["choices"][0]["message"]["content"] == want


def test_a_prompt_larger_than_the_kv_cache_is_rejected_and_serving_goes_on(tiny_model_dir):
    """A real shortage on CPU: a KV cache of 8 blocks (128 tokens) and a prompt of about 400 tokens, under max_model_len (512)."""
    cache_gb = 8 * 16 * 512 / (1 << 30)  # blocks * block_size * bytes per token of the tiny model
    with ServerProcess(["--model", str(tiny_model_dir), "--kv_cache_memory_gb", f"{cache_gb:.10f}"]) as server:
        big = {"messages": [{"role": "user", "content": "word " * 120}], "max_tokens": 4}
        small = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}

        async def scenario():
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                return await asyncio.gather(client.post(CHAT, json=big), *[client.post(CHAT, json=small)
                                                                         for _ in range(3)])

        rejected, *served = asyncio.run(scenario())
        assert rejected.status_code == 500 and "KV cache is too small" in rejected.json()["error"]["message"]
        assert [r.status_code for r in served] == [200, 200, 200]
        assert httpx.post(server.url + CHAT, json=small, timeout=60).status_code == 200


def test_multimodal_batchmates_survive_a_failing_sequence(tiny_vlm_dir):
    """The split recomputes sequences from their first token: image embeddings and M-RoPE positions must survive."""
    import base64
    import io

    from PIL import Image

    def ask(text: str, colour: tuple[int, int, int]) -> InferRequest:
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return InferRequest(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                   {"type": "text", "text": text}]}])

    mp = pytest.MonkeyPatch()
    mp.setenv("SWIFTOPS_FAULT_INJECT", "error:@@boom@@")
    engine = PtEngine(str(tiny_vlm_dir), max_batch_size=8)
    mp.undo()
    try:
        good = [ask("colour?", (200, 0, 0)), ask("shape?", (0, 200, 0)), ask("size?", (0, 0, 200))]
        config = RequestConfig(max_tokens=6, temperature=0)
        solo = [r.choices[0].message.content for r in engine.infer(good, config, use_tqdm=False)]
        mixed = engine.infer(good[:1] + [ask("fail @@boom@@", (9, 9, 9))] + good[1:], config, use_tqdm=False,
                             return_exceptions=True)
        assert isinstance(mixed.pop(1), EngineError)
        assert [r.choices[0].message.content for r in mixed] == solo
    finally:
        engine.close()


def test_the_fault_hook_is_test_only_and_off_by_default(monkeypatch):
    from pathlib import Path

    from swiftops.engines.pt import fault_injection

    package = Path(fault_injection.__file__).resolve().parents[2]
    readers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if fault_injection.ENV_VAR in p.read_text(encoding="utf-8"))
    assert readers == ["engines/pt/fault_injection.py"], readers  # no other module reads the variable
    monkeypatch.delenv(fault_injection.ENV_VAR, raising=False)
    assert fault_injection.FaultInjector.from_env(tokenizer=None) is None
    monkeypatch.setenv(fault_injection.ENV_VAR, "explode:x")
    with pytest.raises(ValueError, match="bad rule"):
        fault_injection.FaultInjector.from_env(tokenizer=None)
