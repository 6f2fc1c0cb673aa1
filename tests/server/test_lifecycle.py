"""Servers of their own: a bounded queue (429 under a flood), SIGTERM drain, a taken port, warm-up readiness."""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from swiftops.protocol import OverloadedError
from swiftops.server.admission import AdmissionController
from tests.server_process import ServerProcess, free_port

CHAT = "/v1/chat/completions"
LONG = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 200, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def small_server(tiny_model_dir):
    with ServerProcess(["--model", str(tiny_model_dir), "--max_concurrency", "1", "--max_queue", "1",
                        "--max_logprobs", "2"]) as process:
        yield process


def test_a_flood_gets_429_beyond_the_bounded_queue(small_server):
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small_server.url, timeout=120) as client:
            return await asyncio.gather(*[client.post(CHAT, json=LONG) for _ in range(8)])

    responses = asyncio.run(flood())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) == {200, 429}, statuses
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "rate_limit_error"
        else:
            assert response.json()["usage"]["completion_tokens"] == 200
    assert httpx.post(small_server.url + CHAT, json={**LONG, "max_tokens": 2}).status_code == 200


def test_max_logprobs_caps_top_logprobs(small_server):
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "logprobs": True}
    assert httpx.post(small_server.url + CHAT, json={**body, "top_logprobs": 2}).status_code == 200
    response = httpx.post(small_server.url + CHAT, json={**body, "top_logprobs": 3})
    assert response.status_code == 400 and "--max_logprobs" in response.json()["error"]["message"]


def test_no_key_configured_means_open_routes(small_server):
    assert httpx.get(small_server.url + "/v1/models").status_code == 200


def test_admission_is_fifo_and_bounded():
    async def scenario() -> list[str]:
        admission = AdmissionController(max_concurrency=1, max_queue=2)
        order: list[str] = []
        await admission.acquire()

        async def waiter(name: str) -> None:
            await admission.acquire()
            order.append(name)

        first = asyncio.ensure_future(waiter("first"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(waiter("second"))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await admission.acquire()  # 1 running + 2 waiting: full
        assert (admission.running, admission.waiting) == (1, 2)
        second.cancel()  # a waiter that leaves gives its queue place back
        await asyncio.sleep(0)
        assert admission.waiting == 1
        admission.release()
        await first
        admission.release()
        assert (admission.running, admission.waiting) == (0, 0)
        return order

    assert asyncio.run(scenario()) == ["first"]


def test_sigterm_drains_in_flight_requests_then_exits_0(tiny_model_dir):
    server = ServerProcess(["--model", str(tiny_model_dir), "--shutdown_timeout", "60"]).start()
    try:
        chunks: list[dict] = []
        started = threading.Event()
        finished: list[str] = []

        def stream() -> None:
            body = {**LONG, "max_tokens": 300, "stream": True}
            with httpx.stream("POST", server.url + CHAT, json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line == "data: [DONE]":
                        finished.append(line)
                    elif line.startswith("data: "):
                        chunks.append(json.loads(line[6:]))
                        started.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert started.wait(60)
        server.terminate()
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no new connections while draining
            httpx.post(server.url + CHAT, json={**LONG, "max_tokens": 1}, timeout=5)
        assert server.wait(timeout=90) == 0
        reader.join(10)
        assert finished == ["data: [DONE]"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert "SIGTERM: draining" in server.output()
    finally:
        server.stop()


def test_a_taken_port_is_a_clear_error(tiny_model_dir):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        result = subprocess.run([sys.executable, "-m", "swiftops.cli.main", "deploy", "--model", str(tiny_model_dir),
                                 "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
