"""Concurrency on the shared server: 64 streaming clients at once, and clients that disconnect."""
from __future__ import annotations

import asyncio
import json
import time

import httpx

CHAT = "/v1/chat/completions"


def _body(i: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}],
            "max_tokens": 12, "temperature": 0, **extra}


async def _stream_text(client: httpx.AsyncClient, body: dict) -> str:
    text = []
    async with client.stream("POST", CHAT, json={**body, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


def test_64_concurrent_streams_do_not_interleave(server, api_key):
    async def run() -> tuple[list[str], list[str]]:
        limits = httpx.Limits(max_connections=128)
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"},
                                     timeout=120, limits=limits) as client:
            whole = await asyncio.gather(*[client.post(CHAT, json=_body(i)) for i in range(64)])
            expected = [r.json()["choices"][0]["message"]["content"] for r in whole]
            streamed = await asyncio.gather(*[_stream_text(client, _body(i)) for i in range(64)])
        return expected, list(streamed)

    expected, streamed = asyncio.run(run())
    assert len(set(expected)) > 32  # different prompts, different answers: a mix-up would show
    assert streamed == expected


def _wait_for(read_metric, name: str, value: float, timeout: float = 10.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_metric(name) == value:
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"{name} did not reach {value} within {timeout}s (now {read_metric(name)})")


def test_disconnect_mid_stream_aborts_the_generation(server, api_key, read_metric):
    generated_before = read_metric("swiftops_generation_tokens_total")
    labels = 'route="/v1/chat/completions",status="499"'
    gone_before = read_metric("swiftops_request_failure_total", labels)
    body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 450, "ignore_eos": True,
            "temperature": 0, "stream": True}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as client:
        with client.stream("POST", CHAT, json=body) as response:
            lines = response.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            assert read_metric("swiftops_num_requests_running") == 1
            assert read_metric("swiftops_engine_sequences_running") == 1
        # leaving the block closed the connection after one chunk of 450
    _wait_for(read_metric, "swiftops_engine_sequences_running", 0)
    _wait_for(read_metric, "swiftops_num_requests_running", 0)
    assert read_metric("swiftops_request_failure_total", labels) == gone_before + 1
    # An aborted request never finishes: none of its tokens are counted as generated.
    assert read_metric("swiftops_generation_tokens_total") == generated_before


def test_disconnect_while_waiting_for_a_whole_answer_aborts_it(server, api_key, read_metric):
    labels = 'route="/v1/chat/completions",status="499"'
    gone_before = read_metric("swiftops_request_failure_total", labels)
    body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 450, "ignore_eos": True}
    try:
        httpx.post(server.url + CHAT, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=0.3)
    except httpx.ReadTimeout:
        pass  # the client gives up and closes the connection while the server generates
    _wait_for(read_metric, "swiftops_engine_sequences_running", 0)
    _wait_for(read_metric, "swiftops_num_requests_running", 0)
    assert read_metric("swiftops_request_failure_total", labels) == gone_before + 1
