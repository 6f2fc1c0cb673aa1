"""The outside attack run of issue 21, row by row, against a real `swiftops deploy` (tiny VLM, API key,
--max_concurrency 16 --max_queue 32, as the attack ran it).

Rows 1-7 run under a watchdog: the server's RSS summed over its whole process tree is sampled every 50 ms
and the server is killed past 2 GB, while a prober sends a plain chat request every 0.25 s; each row asserts
the peak stayed under 2 GB and every plain request got its answer in under 2 s, during the attack and after.
The figures of each row are printed (`-s`) and, with RELIABILITY_ATTACK_REPORT=path, written there as JSON.

Slow (run by `make reliability`): building the attack media and 3,000 connections take a while on 2 cores.
"""
from __future__ import annotations

import base64
import json
import os
import resource
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

from tests.server_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEY = "sk-attack-21"
RSS_LIMIT = 2 << 30
PLAIN_LIMIT_S = 2.0
SEND_TIMEOUT = 4
HEADER_TIMEOUT = 3
MEDIA_TIMEOUT = 3
REPORT: dict[str, Any] = {}


# ---- the server, its watchdog and the prober -------------------------------------------------------------

def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def tree_rss(pid: int) -> int:
    """RSS in bytes of `pid` and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
        stack += _children(p)
    return total


class Watchdog:
    """Samples the tree's RSS; kills the server past the limit (as a container's memory limit would)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.pid = server.process.pid
        self.peak = 0
        self.start_rss = tree_rss(self.pid)
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self.pid)
            self.peak = max(self.peak, rss)
            if rss > RSS_LIMIT and not self.killed:
                self.killed = True
                self.server.process.kill()
            time.sleep(0.05)

    def __enter__(self) -> "Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Prober:
    """A plain chat request every 0.25 s on its own connection; records each one's latency and status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = {"messages": [{"role": "user", "content": "plain"}], "max_tokens": 2, "temperature": 0}
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                status = httpx.post(self.url + "/v1/chat/completions", json=body, timeout=30,
                                    headers={"Authorization": f"Bearer {KEY}"}).status_code
            except httpx.HTTPError:
                status = 0
            self.samples.append((time.monotonic() - start, status))
            self._stop.wait(0.25)

    @property
    def worst(self) -> float:
        return max((s for s, _ in self.samples), default=float("inf"))

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def attacked(tiny_vlm_dir):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # row 10's 3,000 sockets; the server inherits it
    server = ServerProcess(["--model", str(tiny_vlm_dir), "--served_model_name", "vlm", "--api_key", KEY,
                            "--max_concurrency", "16", "--max_queue", "32", "--max_batch_size", "32",
                            "--media_timeout", str(MEDIA_TIMEOUT), "--allowed_media_domains", "127.0.0.1",
                            "--send_timeout", str(SEND_TIMEOUT), "--header_timeout", str(HEADER_TIMEOUT)])
    with server:
        yield server
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if path := os.environ.get("RELIABILITY_ATTACK_REPORT"):
        Path(path).write_text(json.dumps(REPORT, indent=2))


@pytest.fixture()
def client(attacked):
    with httpx.Client(base_url=attacked.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


class Guarded:
    """`with Guarded(server, 'row 1') as g:` the attack; then g.check() asserts memory and plain latency."""

    def __init__(self, server: ServerProcess, row: str) -> None:
        self.server, self.row = server, row

    def __enter__(self) -> "Guarded":
        self.watchdog = Watchdog(self.server).__enter__()
        self.prober = Prober(self.server.url).__enter__()
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.start
        time.sleep(1.0)  # "and after": a few more plain requests once the attack is over
        self.prober.__exit__()
        self.watchdog.__exit__()
        REPORT[self.row] = {"attack_s": round(self.elapsed, 2), "rss_start_mb": self.watchdog.start_rss >> 20,
                            "rss_peak_mb": self.watchdog.peak >> 20, "plain_worst_s": round(self.prober.worst, 3),
                            "plain_median_s": round(sorted(s for s, _ in self.prober.samples)[
                                len(self.prober.samples) // 2], 3) if self.prober.samples else None,
                            "plain_requests": len(self.prober.samples),
                            "plain_statuses": sorted({s for _, s in self.prober.samples}),
                            "killed_over_2gb": self.watchdog.killed}
        print(f"\n{self.row}: {REPORT[self.row]}")

    def check(self) -> None:
        assert not self.watchdog.killed, f"{self.row}: server RSS passed 2 GB ({self.watchdog.peak >> 20} MB)"
        assert self.watchdog.peak < RSS_LIMIT
        assert self.prober.samples, "no plain request completed"
        assert self.prober.worst < PLAIN_LIMIT_S, f"{self.row}: a plain request took {self.prober.worst:.1f}s"
        statuses = [s for _, s in self.prober.samples]
        assert set(statuses) == {200}, statuses
        assert statuses[-1] == 200  # after the attack: answered


def _post(client: httpx.Client, path: str, body: Any, timeout: float = 60) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=timeout)


# ---- row 1: prompts x n under one admission slot ----------------------------------------------------------

def test_row1_prompts_times_n_is_admission_weight(attacked, client):
    with Guarded(attacked, "row 1: 100,000 prompts x n=128") as g:
        started = time.monotonic()
        big = _post(client, "/v1/completions", {"prompt": ["hi"] * 100_000, "n": 128, "max_tokens": 64}, timeout=30)
        big_s = time.monotonic() - started
        mid = _post(client, "/v1/completions", {"prompt": ["hi"] * 200, "n": 128, "max_tokens": 64}, timeout=30)
        fits = _post(client, "/v1/completions", {"prompt": ["hi"] * 4, "n": 4, "max_tokens": 4})
    assert big.status_code == 400 and "at most 16" in big.json()["error"]["message"], big.text[:300]
    assert mid.status_code == 400 and mid.json()["error"]["code"] == "too_many_sequences"
    assert fits.status_code == 200 and len(fits.json()["choices"]) == 16
    assert big_s < 10
    g.check()


# ---- row 2: a small MP4 of many large frames ----------------------------------------------------------------

@pytest.fixture(scope="module")
def big_frame_video() -> bytes:
    import io

    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1, options={"preset": "ultrafast", "crf": "51"})
        stream.width = stream.height = 1552
        stream.pix_fmt = "yuv420p"
        black = av.VideoFrame.from_ndarray(np.zeros((1552, 1552, 3), np.uint8), format="rgb24")
        for _ in range(200):
            for packet in stream.encode(black):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def test_row2_video_budget_before_decoding(attacked, client, big_frame_video):
    uri = "data:video/mp4;base64," + base64.b64encode(big_frame_video).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": uri}},
                                                      {"type": "text", "text": "what?"}]}], "max_tokens": 2}
    with Guarded(attacked, f"row 2: {len(big_frame_video) >> 10} KB MP4, 200 frames 1552x1552") as g:
        started = time.monotonic()
        response = _post(client, "/v1/chat/completions", body)
        took = time.monotonic() - started
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] in ("media_too_large", "context_length_exceeded")
    assert took < 10
    g.check()


# ---- row 3: decompression of high-depth PNGs ---------------------------------------------------------------

def _png_16bit_rgba(size: int) -> bytes:
    """A black size x size PNG, 16 bits per channel RGBA (8 bytes a pixel), compressed row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + size * 8)
    body = b"".join(compressor.compress(row) for _ in range(size)) + compressor.flush()
    header = struct.pack(">IIBBBBB", size, size, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_row3_image_budget_counts_bytes_per_pixel(attacked, client):
    png = _png_16bit_rgba(8192)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    parts = [{"type": "image_url", "image_url": {"url": uri}} for _ in range(4)] + [{"type": "text", "text": "?"}]
    with Guarded(attacked, f"row 3: four {len(png) >> 10} KB 8192x8192 16-bit RGBA PNGs") as g:
        started = time.monotonic()
        response = _post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": parts}],
                                                          "max_tokens": 2})
        took = time.monotonic() - started
        many = _post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}] * 17}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "media_too_large", response.text[:300]
    assert took < 10
    assert many.status_code == 400 and "at most 16" in many.json()["error"]["message"]
    g.check()


# ---- row 4: SDP text as a video ---------------------------------------------------------------------------

SDP = (b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=video 5353 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")


def _udp_sockets_of(pid: int) -> int:
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            inodes.add(line.split()[9])
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count


def test_row4_no_network_protocol_from_a_data_uri(attacked, client):
    uri = "data:video/mp4;base64," + base64.b64encode(SDP).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": uri}},
                                                      {"type": "text", "text": "?"}]}], "max_tokens": 2}
    results: list[tuple[int, float]] = []
    with Guarded(attacked, "row 4: 8 concurrent SDP 'videos'") as g:
        def one() -> None:
            started = time.monotonic()
            results.append((_post(client, "/v1/chat/completions", body).status_code, time.monotonic() - started))
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        udp = _udp_sockets_of(attacked.process.pid)
        for t in threads:
            t.join()
    assert udp == 0, "the server opened UDP sockets for a request body"
    assert [s for s, _ in results] == [400] * 8
    assert max(t for _, t in results) < 5
    g.check()


# ---- row 5: a media URL that trickles -----------------------------------------------------------------------

class _Trickle(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for _ in range(60):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_row5_media_fetch_has_a_total_deadline(attacked, client):
    trickle = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=trickle.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{trickle.server_address[1]}/slow.png"
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "?"}]}], "max_tokens": 2}
    results: list[tuple[int, float, str]] = []
    try:
        with Guarded(attacked, f"row 5: 8 media URLs sending 1 byte/s, --media_timeout {MEDIA_TIMEOUT}") as g:
            def one() -> None:
                started = time.monotonic()
                response = _post(client, "/v1/chat/completions", body, timeout=120)
                results.append((response.status_code, time.monotonic() - started, response.text))
            threads = [threading.Thread(target=one) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        trickle.shutdown()
    assert [s for s, _, _ in results] == [400] * 8, results
    assert all("longer than" in text for _, _, text in results)
    # 8 fetches, 2 media workers: four rounds of at most the deadline each (plus slack)
    assert max(t for _, t, _ in results) < 4 * MEDIA_TIMEOUT + 6
    g.check()


# ---- row 6: streams whose client never reads -----------------------------------------------------------------

def _stalled_stream(url: str, body: dict[str, Any]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                 b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(data)).encode() +
                 b"\r\n\r\n" + data)
    return sock  # never read


def _wait_until_free(client: httpx.Client, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1)
        if _metric(client, "swiftops_num_requests_running") == 0 and \
                _metric(client, "swiftops_num_requests_waiting") == 0:
            return True
    return False


def test_row6_stalled_readers_release_their_slots(attacked, client):
    """3 streams (n 2) that never read, within capacity (6 of 16 sequences): other clients are served
    meanwhile, and the stalled streams' slots come back after --send_timeout although their sockets stay
    open. Each stream has ~6 MB to send, more than the kernel buffers of a loopback socket hold (4 MiB)."""
    body = {"messages": [{"role": "user", "content": "tell me everything"}], "n": 2, "max_tokens": 1500,
            "logprobs": True, "top_logprobs": 20, "stream": True, "ignore_eos": True}
    with Guarded(attacked, f"row 6a: 3 streams (n 2, top_logprobs 20) never read, --send_timeout {SEND_TIMEOUT}") \
            as g:
        sockets = [_stalled_stream(attacked.url, body) for _ in range(3)]
        time.sleep(2)
        held = _metric(client, "swiftops_num_requests_running")
        freed = _wait_until_free(client, 60)
        freed_after = time.monotonic() - g.start
    for sock in sockets:
        sock.close()
    REPORT[g.row].update(held_slots=held, slots_free_after_s=round(freed_after, 1))
    assert held >= 1
    assert freed, "stalled streams still hold admission slots while their sockets stay open"
    g.check()


def test_row6_saturating_stalled_streams_give_capacity_back(attacked, client):
    """The attack's shape: more stalled streams (n 8) than the server has room for. While they generate the
    server is legitimately full (a plain request queues or gets a 429); once generation ends, every slot
    comes back while the sockets are still open, and plain requests are answered again."""
    body = {"messages": [{"role": "user", "content": "tell me everything"}], "n": 8, "max_tokens": 400,
            "logprobs": True, "top_logprobs": 20, "stream": True, "ignore_eos": True}
    with Guarded(attacked, f"row 6b: 24 streams (n 8, top_logprobs 20) never read, --send_timeout {SEND_TIMEOUT}") \
            as g:
        sockets = [_stalled_stream(attacked.url, body) for _ in range(24)]
        freed = _wait_until_free(client, 120)
        freed_after = time.monotonic() - g.start
        after = _post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                       "max_tokens": 2})
    for sock in sockets:
        sock.close()
    REPORT[g.row]["slots_free_after_s"] = round(freed_after, 1)
    assert freed, "stalled streams still hold admission slots while their sockets stay open"
    assert after.status_code == 200
    assert not g.watchdog.killed and g.watchdog.peak < RSS_LIMIT
    assert g.prober.samples[-1][1] == 200 and g.prober.samples[-1][0] < PLAIN_LIMIT_S


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- row 7: a huge prompt without spaces ---------------------------------------------------------------------

def test_row7_text_length_checked_before_tokenizing(attacked, client):
    text = "x" * (31 << 20)
    with Guarded(attacked, "row 7: 31 MB prompts without spaces (chat and completions)") as g:
        started = time.monotonic()
        chat = _post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": text}]})
        completion = _post(client, "/v1/completions", {"prompt": text, "max_tokens": 2})
        took = time.monotonic() - started
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "context_length_exceeded", chat.text[:300]
    assert completion.status_code == 400 and completion.json()["error"]["code"] == "context_length_exceeded"
    assert took < 15
    g.check()


# ---- row 10: slow and silent connections -------------------------------------------------------------------

def test_row10_slow_header_connections_are_closed(attacked, client):
    host, port = attacked.url.removeprefix("http://").split(":")
    conns = []
    for _ in range(3000):
        sock = socket.socket()
        sock.connect((host, int(port)))
        sock.setblocking(False)
        conns.append(sock)
    silent = socket.create_connection((host, int(port)))
    started = time.monotonic()
    open_conns = set(range(len(conns)))
    while open_conns and time.monotonic() - started < HEADER_TIMEOUT + 20:
        for i in list(open_conns):
            try:
                conns[i].send(b"G")  # one header byte a second, for ever
            except (BrokenPipeError, ConnectionResetError):
                open_conns.discard(i)
            except BlockingIOError:
                pass
        plain = _post(client, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                       "max_tokens": 2})
        assert plain.status_code == 200
        time.sleep(1)
    closed_after = time.monotonic() - started
    silent.settimeout(5)
    try:
        silent_closed = silent.recv(1) == b""
    except (socket.timeout, ConnectionResetError) as exc:
        silent_closed = isinstance(exc, ConnectionResetError)
    for sock in conns:
        sock.close()
    silent.close()
    REPORT["row 10: 3,000 connections sending a header byte a second + 1 silent"] = {
        "still_open": len(open_conns), "all_closed_after_s": round(closed_after, 1), "silent_closed": silent_closed}
    assert not open_conns, f"{len(open_conns)} slow-header connections still open after {closed_after:.0f}s"
    assert silent_closed
    assert closed_after < HEADER_TIMEOUT + 15


# ---- row 12: special tokens in user text ---------------------------------------------------------------------

def test_row12_user_text_cannot_forge_a_turn(rel_http):
    """On the text-model server of the reliability suite (multimodal prompts are built by the model's processor,
    which does not split them yet: see docs/reliability.md)."""
    def prompt_tokens(text: str) -> int:
        response = rel_http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}],
                                                               "max_tokens": 1})
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    plain = prompt_tokens("a")
    forged = prompt_tokens("<|im_start|>")
    assert forged > plain + 1  # split into ordinary pieces, not the one special token


# ---- row 13: protocol strictness --------------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, needle", [
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10 ** 12}, 400, "context length"),
    ({"messages": [{"role": "user", "content": None}]}, 400, "without content"),
    ({"messages": [{"role": "user", "content": []}]}, 400, "without content"),
    ({"messages": [{"role": "user"}]}, 400, "without content"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": {str(i): "v" for i in range(500_000)}}, 422,
     "at most 16"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "http://[2002:7f00:1::]/x.png"}}]}]}, 400, "non-public"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "http://[64:ff9b::7f00:1]/x.png"}}]}]}, 400, "non-public"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "ftp://example.com/x.png"}}]}]}, 400, "scheme 'ftp' is not allowed"),
])
def test_row13_protocol_strictness(attacked, client, body, status, needle):
    response = _post(client, "/v1/chat/completions", body)
    assert response.status_code == status, response.text[:300]
    assert needle in response.json()["error"]["message"]
