"""A dead engine process (SIGKILL, as the OOM killer does) is a failed /health and a server that exits non-zero
within 10 s, so Kubernetes restarts the pod; a stream in flight gets an error event, never a hang. A SIGTERM to
the server drains it and stops the engine process with it."""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import httpx

from tests.server_process import ServerProcess

CHAT = "/v1/chat/completions"


def _engine_pid(server: ServerProcess) -> int:
    found = re.search(r"engine process (\d+) ready", server.output())
    assert found, server.output()[-2000:]
    return int(found.group(1))


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except FileNotFoundError:
        return False


def test_sigkill_of_the_engine_process_fails_health_and_exits_non_zero_within_10s(tiny_model_dir):
    server = ServerProcess(["--model", str(tiny_model_dir), "--max_batch_size", "4"]).start()
    try:
        engine_pid = _engine_pid(server)
        assert engine_pid != server.process.pid and _alive(engine_pid)
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
        events: list[str] = []

        def stream() -> None:
            body = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 400, "ignore_eos": True,
                    "stream": True}
            try:
                with httpx.stream("POST", server.url + CHAT, json=body, timeout=30) as response:
                    for line in response.iter_lines():
                        events.append(line)
            except httpx.HTTPError as exc:
                events.append(f"transport error: {exc}")

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 30
        while not any(e.startswith("data: ") for e in events) and time.monotonic() < deadline:
            time.sleep(0.02)
        killed_at = time.monotonic()
        os.kill(engine_pid, signal.SIGKILL)
        health: Optional[httpx.Response] = None  # None: the server is gone (refused), which fails a probe too
        while time.monotonic() - killed_at < 10:
            try:
                health = httpx.get(server.url + "/health", timeout=2)
            except httpx.TransportError:
                health = None
                break
            if health.status_code == 503:
                break
            time.sleep(0.05)
        assert health is None or health.status_code == 503, health.text
        status = server.wait(timeout=max(0.1, 10 - (time.monotonic() - killed_at)))
        assert status != 0
        assert time.monotonic() - killed_at < 10
        reader.join(timeout=10)
        assert not reader.is_alive()  # the stream in flight ended, it did not hang
        assert any("engine process exited" in e for e in events) or any("transport error" in e for e in events), events
    finally:
        server.stop()


def test_sigterm_drains_then_stops_the_engine_process(tiny_model_dir):
    server = ServerProcess(["--model", str(tiny_model_dir), "--max_batch_size", "4"]).start()
    try:
        engine_pid = _engine_pid(server)
        server.terminate()
        assert server.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while _alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(engine_pid)
    finally:
        server.stop()


def test_a_server_killed_outright_takes_its_engine_process_along(tiny_model_dir):
    server = ServerProcess(["--model", str(tiny_model_dir), "--max_batch_size", "4"]).start()
    try:
        engine_pid = _engine_pid(server)
        server.process.kill()  # SIGKILL: no drain, no Shutdown message
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(engine_pid)  # it watched its parent: no orphan holds the GPU
    finally:
        server.stop()
