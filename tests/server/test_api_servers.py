"""Several API-server processes in front of one engine process (`--api_server_count`): connections spread over
them, limits and /metrics are the deployment's, SIGTERM drains them all, and the death of any process (engine, or
an API server) ends the deployment with a non-zero exit within 10 s."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from swiftops.server.admission import AdmissionController
from swiftops.server.admission_counts import SharedCounts
from swiftops.server.api_servers import default_api_server_count
from swiftops.server.lifecycle import bind_socket, bind_sockets
from tests.server_process import ServerProcess, free_port

COMPLETIONS = "/v1/completions"


# ---- the parts, in one process --------------------------------------------------------------------------------
def _two_controllers(tmp_path, limit: int, queue: int) -> tuple[AdmissionController, AdmissionController]:
    """Two API servers' admission over one counts file, as two processes of a deployment have it."""
    path = str(tmp_path / "admission")
    return (AdmissionController(limit, queue, SharedCounts(path, create=True)),
            AdmissionController(limit, queue, SharedCounts(path)))


def test_shared_counts_make_two_controllers_one_limit(tmp_path):
    first, second = _two_controllers(tmp_path, 2, 1)

    async def scenario() -> None:
        await first.acquire()
        await second.acquire()  # two running in all: the limit
        assert first.running == second.running == 2
        queued = asyncio.ensure_future(second.acquire())  # the one queue place of the deployment
        await asyncio.sleep(0.02)
        assert not queued.done() and first.waiting == 1
        with pytest.raises(Exception, match="at capacity"):
            await first.acquire()  # the queue is full, though this process queues nothing itself
        first.release()  # freed in the other "process": the waiter notices by polling
        await asyncio.wait_for(queued, 1.0)
        assert first.running == 2 and first.waiting == 0
        second.release()
        second.release()
        assert first.running == 0

    asyncio.run(scenario())


def test_no_process_admits_past_another_process_waiter(tmp_path):
    first, second = _two_controllers(tmp_path, 1, 4)

    async def scenario() -> None:
        await first.acquire()
        queued = asyncio.ensure_future(second.acquire())
        await asyncio.sleep(0.02)
        first.release()  # a slot frees, and a new request reaches the first process at once
        arrival = asyncio.ensure_future(first.acquire())
        await asyncio.sleep(0)
        assert not arrival.done()  # it queues behind the other process's waiter instead of taking the slot
        await asyncio.wait_for(asyncio.wait({queued, arrival}, return_when=asyncio.FIRST_COMPLETED), 1.0)
        assert first.running == 1 and first.waiting == 1  # one of them runs; which depends on who polled first
        second.release()  # the counts are shared: a release in either process frees the slot
        await asyncio.wait_for(asyncio.gather(queued, arrival), 1.0)
        second.release()
        assert first.running == 0 and first.waiting == 0

    asyncio.run(scenario())


def test_shared_counts_let_a_cancelled_waiter_go_without_leaking(tmp_path):
    first, second = _two_controllers(tmp_path, 1, 4)

    async def scenario() -> None:
        await first.acquire()
        waiter = asyncio.ensure_future(second.acquire())
        await asyncio.sleep(0.02)
        assert first.waiting == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert first.waiting == 0 and first.running == 1
        first.release()
        assert second.running == 0

    asyncio.run(scenario())


def test_bind_sockets_share_a_port_and_keep_others_out():
    sockets = bind_sockets("127.0.0.1", 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        port = ports.pop()
        with pytest.raises(OSError):
            bind_socket("127.0.0.1", port)  # a plain server cannot take the port
        with pytest.raises(OSError):
            bind_sockets("127.0.0.1", port, 2)  # nor can a second deployment join the set
    finally:
        for sock in sockets:
            sock.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            bind_sockets("127.0.0.1", taken.getsockname()[1], 2)


def test_default_count_follows_usable_cores():
    assert default_api_server_count(2) == 1
    assert default_api_server_count(15) == 1
    assert default_api_server_count(16) == 2
    assert default_api_server_count(128) == 4
    assert default_api_server_count() >= 1


# ---- a real deployment ----------------------------------------------------------------------------------------
def _pids_in_log(server: ServerProcess, marker: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"\[(\d+)\] swiftops\.access: \w+ " + re.escape(marker), server.output())}


def _stream(url: str, prompt: str, max_tokens: int, started: threading.Semaphore | None = None) -> tuple[int, int]:
    """(status, events carrying text) of one streamed completion; `started` is released at its first event."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", url + COMPLETIONS, json=body, timeout=60) as response:
        events = 0
        for line in response.iter_lines():
            if line.startswith('data: {"id"'):
                events += 1
                if events == 1 and started is not None:
                    started.release()
        return response.status_code, events


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _server(tiny_model_dir, *flags: str) -> ServerProcess:
    return ServerProcess(["--model", str(tiny_model_dir), "--served_model_name", "tiny", "--api_server_count", "2",
                          "--max_batch_size", "8", *flags], ready_timeout=180)


def _wait_for_metric(server: ServerProcess, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        if line in text.splitlines():
            return
        assert time.monotonic() < deadline, f"{line!r} not in /metrics:\n{text}"
        time.sleep(0.1)


def _worker_pid(server: ServerProcess) -> int:
    found = re.search(r"started 1 more API-server processes: \[(\d+)\]", server.output())
    assert found, server.output()[-2000:]
    return int(found.group(1))


def test_two_api_servers_share_the_work_the_limits_and_the_metrics(tiny_model_dir):
    with _server(tiny_model_dir, "--max_concurrency", "2", "--max_queue", "0") as server:
        worker = _worker_pid(server)
        assert _alive(worker)
        # Sequential short requests on fresh connections: the kernel spreads connections over both sockets.
        for i in range(24):
            response = httpx.post(server.url + COMPLETIONS, json={"model": "tiny", "prompt": f"a{i}", "max_tokens": 2},
                                  timeout=30)
            assert response.status_code == 200, response.text
        assert _pids_in_log(server, "POST /v1/completions 200") == {server.process.pid, worker}
        # Whichever process answers, it sums both (each counts a request once its last byte is sent: poll).
        _wait_for_metric(server, 'swiftops_request_success_total{route="/v1/completions",status="200"} 24.0')

        # Twelve long streams at once against --max_concurrency 2 and no queue: two run in the whole deployment
        # (each process alone would admit two: four), the rest get 429 from whichever process they reached. One
        # more may run if it arrives after a first stream ended (a slow machine).
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(lambda i: _stream(server.url, f"b{i}", 480), range(12)))
        statuses = [status for status, _ in results]
        admitted = statuses.count(200)
        assert 2 <= admitted <= 3 and statuses.count(429) == 12 - admitted, results
        assert all(events > 0 for status, events in results if status == 200)
        _wait_for_metric(server, f'swiftops_request_failure_total{{route="/v1/completions",status="429"}} {12 - admitted}.0')
        _wait_for_metric(server, "swiftops_num_requests_running 0.0")


def test_sigterm_drains_every_api_server_then_stops_the_engine(tiny_model_dir):
    server = _server(tiny_model_dir).start()
    try:
        worker = _worker_pid(server)
        engine = int(re.search(r"engine process (\d+) ready", server.output()).group(1))
        started = threading.Semaphore(0)
        streams_count = 16  # on two sockets: all on one with probability 2 / 2**16
        with concurrent.futures.ThreadPoolExecutor(streams_count) as pool:
            streams = [pool.submit(_stream, server.url, f"c{i}", 300, started) for i in range(streams_count)]
            for _ in range(streams_count):  # every stream admitted and under way
                assert started.acquire(timeout=60)
            server.terminate()
            results = [future.result(timeout=60) for future in streams]
        assert server.wait(60) == 0, server.output()[-3000:]
        assert [status for status, _ in results] == [200] * streams_count and all(n > 0 for _, n in results)
        assert _pids_in_log(server, "POST /v1/completions 200") == {server.process.pid, worker}
        assert not _alive(worker) and not _alive(engine)
    finally:
        server.stop()


@pytest.mark.parametrize("victim", ["engine", "api_server"])
def test_a_dead_process_ends_the_deployment_non_zero_within_10s(tiny_model_dir, victim):
    server = _server(tiny_model_dir).start()
    try:
        worker = _worker_pid(server)
        engine = int(re.search(r"engine process (\d+) ready", server.output()).group(1))
        killed_at = time.monotonic()
        os.kill(engine if victim == "engine" else worker, signal.SIGKILL)
        status = server.wait(10)
        assert time.monotonic() - killed_at < 10
        assert status == 1, server.output()[-3000:]
        deadline = time.monotonic() + 5
        while (_alive(worker) or _alive(engine)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker) and not _alive(engine)
        expected = "the engine process exited unexpectedly" if victim == "engine" else f"API-server process {worker}"
        assert f"exiting with status 1: {expected}" in server.output()
    finally:
        server.stop()


def test_a_taken_port_fails_at_once_with_several_api_servers(tiny_model_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ServerProcess(["--model", str(tiny_model_dir), "--api_server_count", "2"], port=port)
        with pytest.raises(RuntimeError, match="already in use"):
            server.start()
        assert server.process.returncode == 2
    assert free_port()
