"""Clients that vanish mid-stream, mid-prefill and while queued (in the server's admission queue and in the engine's
batch queue): their work is aborted, their slots are freed and they are counted as 499, all seen through /metrics.

The server is made small on purpose: 3 requests at once, 2 sequences per batch, 16 prompt tokens per step (so a
long prompt spends many steps in prefill), and prompts marked SLOW make each engine step holding them last 50 ms
(the test-only `delay:` rule of swiftops/engines/pt/fault_injection.py): a tiny model's step takes a millisecond,
too short to leave in the middle of.
"""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.server_process import ServerProcess

CHAT = "/v1/chat/completions"
GONE = 'route="/v1/chat/completions",status="499"'
SLOW = "@@slow@@"
LONG = {"messages": [{"role": "user", "content": f"go on {SLOW}"}], "max_tokens": 400, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def small_server(tiny_model_dir):
    with ServerProcess(["--model", str(tiny_model_dir), "--max_concurrency", "3", "--max_queue", "8",
                        "--max_batch_size", "2", "--max_num_batched_tokens", "16"],
                       env={"SWIFTOPS_FAULT_INJECT": f"delay:{SLOW}"}) as server:
        yield server


def _metric(server, name: str, labels: str = "") -> float:
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


def _wait(server, name: str, value: float, timeout: float = 20.0, labels: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _metric(server, name, labels) == value:
            return
        time.sleep(0.02)
    raise AssertionError(f"{name} stayed at {_metric(server, name, labels)}, expected {value}")


def _send(server, body: dict) -> socket.socket:
    """A request on its own socket, nothing read: closing the socket is the client vanishing."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def _vanish(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, at once
    sock.close()


def _idle(server) -> None:
    for name in ("swiftops_num_requests_running", "swiftops_num_requests_waiting",
                 "swiftops_engine_sequences_running", "swiftops_engine_sequences_waiting"):
        _wait(server, name, 0)


def test_clients_gone_mid_stream_free_their_slots(small_server):
    gone_before = _metric(small_server, "swiftops_request_failure_total", GONE)
    socks = [_send(small_server, {**LONG, "stream": True}) for _ in range(2)]  # the engine's batch holds 2
    for sock in socks:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # streaming has begun
    _wait(small_server, "swiftops_engine_sequences_running", 2)
    for sock in socks:
        _vanish(sock)
    _idle(small_server)
    _wait(small_server, "swiftops_request_failure_total", gone_before + 2, labels=GONE)


def test_a_client_gone_mid_prefill_aborts_it(small_server):
    generated_before = _metric(small_server, "swiftops_generation_tokens_total")
    gone_before = _metric(small_server, "swiftops_request_failure_total", GONE)
    # ~450 prompt tokens at 16 per step (about 28 steps): the prompt is still being prefilled when the client leaves.
    body = {**LONG, "messages": [{"role": "user", "content": SLOW + " word" * 135}], "max_tokens": 8, "stream": True}
    sock = _send(small_server, body)
    _wait(small_server, "swiftops_engine_sequences_running", 1)
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(1)  # no response yet: the first token (and so the 200) comes only after the prefill
    _vanish(sock)
    _idle(small_server)
    _wait(small_server, "swiftops_request_failure_total", gone_before + 1, labels=GONE)
    assert _metric(small_server, "swiftops_generation_tokens_total") == generated_before


def test_clients_gone_while_queued_leave_the_queues(small_server):
    gone_before = _metric(small_server, "swiftops_request_failure_total", GONE)
    running = [_send(small_server, LONG) for _ in range(3)]  # fill --max_concurrency 3 (2 in the batch, 1 waits)
    _wait(small_server, "swiftops_num_requests_running", 3)
    _wait(small_server, "swiftops_engine_sequences_waiting", 1)  # the engine's batch holds 2
    queued = [_send(small_server, LONG) for _ in range(4)]
    _wait(small_server, "swiftops_num_requests_waiting", 4)  # the server's admission queue
    for sock in queued:
        _vanish(sock)
    _wait(small_server, "swiftops_num_requests_waiting", 0)
    assert _metric(small_server, "swiftops_num_requests_running") == 3  # the others are untouched
    _vanish(running[2])  # admitted, but waiting for a batch slot in the engine
    _wait(small_server, "swiftops_engine_sequences_waiting", 0)
    assert _metric(small_server, "swiftops_engine_sequences_running") == 2
    for sock in running[:2]:
        _vanish(sock)
    _idle(small_server)
    _wait(small_server, "swiftops_request_failure_total", gone_before + 7, labels=GONE)
    response = httpx.post(small_server.url + CHAT, json={**LONG, "max_tokens": 3}, timeout=60)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 3
