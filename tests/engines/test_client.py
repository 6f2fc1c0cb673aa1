"""`InferClient` against a real server: the same answers as `PtEngine` on the same greedy requests."""
from __future__ import annotations

import asyncio
import base64

import pytest

from swiftops import InferClient, InferRequest, InferStats, PtEngine, RequestConfig
from swiftops.engines.client import InferClientError, media_to_uri
from swiftops.protocol import AdapterRequest, ChatCompletionResponse
from tests.server_process import ServerProcess

API_KEY = "client-test-key"
REQUESTS = [
    InferRequest(messages=[{"role": "user", "content": "Who are you?"}]),
    InferRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]),
    InferRequest(messages=[{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2 3"},
                           {"role": "user", "content": "Again."}]),
    InferRequest(prompt="Once upon a time"),
]
GREEDY = RequestConfig(max_tokens=16, temperature=0)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with ServerProcess(["--model", str(tiny_model_dir), "--api_key", API_KEY]) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    engine = InferClient(host=server.host, port=server.port, api_key=API_KEY)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    engine = PtEngine(str(tiny_model_dir), max_batch_size=8)
    yield engine
    engine.close()


def test_models(client, tiny_model_dir):
    assert client.models == [tiny_model_dir.name]
    assert client.model_name == tiny_model_dir.name and client.adapter_names == []


def test_same_answers_as_pt_engine(client, local):
    stats = InferStats()
    remote = client.infer(REQUESTS, GREEDY, metrics=[stats])
    expected = local.infer(REQUESTS, GREEDY)
    assert all(isinstance(r, ChatCompletionResponse) for r in remote)
    assert [r.choices[0].message.content for r in remote] == [r.choices[0].message.content for r in expected]
    assert [r.usage for r in remote] == [r.usage for r in expected]
    assert [r.choices[0].finish_reason for r in remote] == [r.choices[0].finish_reason for r in expected]
    summary = stats.compute()
    assert summary["num_samples"] == len(REQUESTS)
    assert summary["num_generated_tokens"] == sum(r.usage.completion_tokens for r in expected)


def test_streaming_matches_pt_engine_chunk_for_chunk(client, local):
    config = RequestConfig(max_tokens=16, temperature=0, stream=True)
    for remote_stream, local_stream in zip(client.infer(REQUESTS, config), local.infer(REQUESTS, config)):
        remote_chunks, local_chunks = list(remote_stream), list(local_stream)
        def text(chunks): return "".join(c.choices[0].delta.content or "" for c in chunks)
        assert text(remote_chunks) == text(local_chunks)
        # As locally: the role in the first chunk, usage on the last one, never a chunk without choices.
        assert remote_chunks[0].choices[0].delta.role == "assistant"
        assert all(c.choices for c in remote_chunks)
        assert remote_chunks[-1].usage == local_chunks[-1].usage
        assert remote_chunks[-1].choices[0].finish_reason == local_chunks[-1].choices[0].finish_reason


def test_logprobs_and_n_like_pt_engine(client, local):
    config = RequestConfig(max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, n=2)
    for request in (REQUESTS[0], REQUESTS[3]):
        remote, = client.infer([request], config)
        expected, = local.infer([request], config)
        assert len(remote.choices) == 2
        for r, e in zip(remote.choices, expected.choices):
            assert [t.token for t in r.logprobs.content] == [t.token for t in e.logprobs.content]
            assert [t.logprob for t in r.logprobs.content] == pytest.approx([t.logprob for t in e.logprobs.content],
                                                                             abs=1e-4)


def test_streamed_n_and_logprobs_like_pt_engine(client, local):
    config = RequestConfig(max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, n=2, stream=True)
    for request in (REQUESTS[0], REQUESTS[3]):
        (remote,) = client.infer([request], config)
        (local_stream,) = local.infer([request], config)
        remote_chunks, local_chunks = list(remote), list(local_stream)
        for i in range(2):
            def tokens(chunks):
                return [t.token for c in chunks if c.choices[0].index == i for t in c.choices[0].logprobs.content]
            assert tokens(remote_chunks) == tokens(local_chunks)
        assert remote_chunks[-1].usage == local_chunks[-1].usage
        assert [c.usage for c in remote_chunks[:-1]] == [None] * (len(remote_chunks) - 1)


def test_infer_async_and_typed_errors(client):
    async def run():
        ok = await client.infer_async(REQUESTS[0], GREEDY)
        with pytest.raises(InferClientError) as unknown:
            await client.infer_async(REQUESTS[0], GREEDY, adapter_request=AdapterRequest(name="no-such-lora"))
        too_long = InferRequest(messages=[{"role": "user", "content": "word " * 3000}])
        with pytest.raises(InferClientError) as long_error:
            await client.infer_async(too_long, GREEDY)
        return ok, unknown.value, long_error.value

    ok, unknown, too_long = asyncio.run(run())
    assert ok.choices[0].message.content
    assert unknown.status == 404 and "no-such-lora" in unknown.message
    assert too_long.status == 400 and too_long.code == "context_length_exceeded"
    results = client.infer([REQUESTS[0], InferRequest(messages=[{"role": "user", "content": "w " * 3000}])],
                           GREEDY, return_exceptions=True)
    assert isinstance(results[0], ChatCompletionResponse) and isinstance(results[1], InferClientError)


def test_wrong_key_and_unreachable_server(server):
    with pytest.raises(InferClientError) as wrong:
        InferClient(base_url=server.url + "/v1", api_key="nope").models
    assert wrong.value.status == 401
    dead = InferClient(port=1)
    with pytest.raises(InferClientError) as unreachable:
        dead.models
    assert unreachable.value.status == 503 and "swiftops deploy" in unreachable.value.message


def test_local_media_paths_become_data_uris(tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    uri = media_to_uri(str(image))
    assert uri == "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    assert media_to_uri("https://example.com/cat.png") == "https://example.com/cat.png"
    assert media_to_uri("data:image/png;base64,AAAA") == "data:image/png;base64,AAAA"


def test_media_in_content_parts_are_sent_as_base64(client, tmp_path):
    from swiftops.engines.client import _encode_message
    image = tmp_path / "dog.jpg"
    image.write_bytes(b"\xff\xd8\xff jpeg bytes")
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(image)}},
                                           {"type": "image", "image": str(image)}, {"type": "text", "text": "?"}]}
    encoded = _encode_message(message)["content"]
    assert encoded[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert encoded[1]["image"].startswith("data:image/jpeg;base64,")
    assert encoded[2] == {"type": "text", "text": "?"}
    # The text-only tiny model refuses images: the server's 400 arrives as a typed error.
    with pytest.raises(InferClientError) as refused:
        client.infer([InferRequest(messages=[message])], GREEDY)
    assert refused.value.status == 400


def test_raw_prompt_without_max_tokens_runs_to_the_engine_default(client, local):
    # /v1/completions alone would stop at OpenAI's default of 16 tokens; PtEngine does not.
    request = InferRequest(prompt="Once upon a time")
    config = RequestConfig(temperature=0)
    remote, = client.infer([request], config)
    expected, = local.infer([request], config)
    assert remote.usage.completion_tokens == expected.usage.completion_tokens > 16
    assert remote.choices[0].message.content == expected.choices[0].message.content
