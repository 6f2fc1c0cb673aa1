"""Issue 21 rows 6 and 10, fast: the guarded httptools protocol closes connections that never complete their
headers (slow or silent) or send too large a head, and aborts a response whose client stopped reading (the app sees a disconnect,
so the generation is cancelled and its admission slots go back)."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from swiftops.server.http_guard import MAX_HEAD_BYTES, guarded_protocol
from tests.server_process import free_port


class _App:
    """/big streams 64 KiB chunks for ever (until the client is gone); anything else answers 'ok'."""

    def __init__(self) -> None:
        self.disconnected = threading.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/big":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            chunk = b"x" * 65536
            try:
                for _ in range(100_000):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except OSError:
                pass
            finally:
                # uvicorn turns sends on an aborted connection into no-ops and reports the disconnect here
                message = await receive()
                if message["type"] == "http.disconnect":
                    self.disconnected.set()
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture()
def served():
    app = _App()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                            http=guarded_protocol(header_timeout=1.0, send_timeout=1.0))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield app, port
    server.should_exit = True
    thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float, trickle: bool = False) -> float:
    sock.settimeout(0.2)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                sock.send(b"G")
            if sock.recv(1) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
    return float("inf")


def _read_ok(sock: socket.socket, refused: str) -> bytes:
    """The response up to the app's "ok" body; `refused` if the server closes the connection first."""
    data = b""
    while not data.endswith(b"ok"):
        more = sock.recv(1024)
        assert more, refused
        data += more
    return data


def test_silent_and_slow_header_connections_are_closed(served):
    _, port = served
    silent = socket.create_connection(("127.0.0.1", port))
    slow = socket.create_connection(("127.0.0.1", port))
    assert _closed_within(silent, 5) < 2.5
    assert _closed_within(slow, 5, trickle=True) < 2.5
    silent.close()
    slow.close()


def test_a_prompt_client_is_not_affected_and_keep_alive_restarts_the_clock(served):
    _, port = served
    sock = socket.create_connection(("127.0.0.1", port))
    for _ in range(3):
        time.sleep(0.6)  # under the header timeout each time, 1.8 s in all
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _read_ok(sock, "the server closed a connection that was sending requests promptly")
    sock.close()


def test_a_client_that_stops_reading_is_aborted_after_the_send_timeout(served):
    app, port = served
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    assert app.disconnected.wait(10), "the app never saw the stalled client go"
    assert time.monotonic() - started < 5
    sock.close()


def test_a_request_head_past_the_cap_gets_a_431_and_the_connection_closes(served):
    _, port = served
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
    data = b""
    while True:
        more = sock.recv(4096)
        if not more:
            break
        data += more
    assert data.startswith(b"HTTP/1.1 431"), data[:200]
    assert b"larger than 64 KiB; send shorter headers" in data
    sock.close()
    # a head just under the cap (a long bearer token) is served
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 16000 + b"\r\n\r\n")
    assert _read_ok(sock, "a request with a 16 KB header was refused").startswith(b"HTTP/1.1 200")
    sock.close()
