"""Issue 21's media rows, fast: decoded-size budget from headers (row 2, 3), container allow-list and no
network protocol from a data URI (row 4), a total fetch deadline (row 5), IPv6 forms of IPv4 hosts and
other schemes (row 13), and the bounded worker pools (row 4)."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from swiftops.media import MediaLimits, MediaPolicy, load_audio, load_image, load_video, read_media
from swiftops.media.budget import MediaBudget, request_media_budget
from swiftops.media.container import sniff_container
from swiftops.media.fetch import check_url, embedded_ipv4, fetch_url
from swiftops.media.worker_pools import BoundedPool
from swiftops.protocol import BadRequestError, OverloadedError

SERVER = MediaPolicy.for_server()


@contextlib.contextmanager
def use_budget(budget: MediaBudget):
    """What the server does for each request (swiftops.server.served_request): the media budget in the context."""
    token = request_media_budget.set(budget)
    try:
        yield budget
    finally:
        request_media_budget.reset(token)


def _png(width: int, height: int, mode: str = "RGBA") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, format="PNG")
    return out.getvalue()


def _mp4(frames: int, size: int, rate: int = 1) -> bytes:
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((size, size, 3), np.uint8), format="rgb24")
        for _ in range(frames):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def test_image_is_charged_from_its_header_with_bytes_per_pixel():
    png = _png(1024, 1024)  # RGBA: 4 bytes a pixel + its 3-byte RGB copy = 7 MiB decoded
    with use_budget(MediaBudget(max_decoded_bytes=6 << 20)):
        with pytest.raises(BadRequestError, match="over this server's 6 MiB") as info:
            load_image(png, SERVER)
    assert info.value.code == "media_too_large"
    budget = MediaBudget(max_decoded_bytes=8 << 20)
    with use_budget(budget):
        assert load_image(png, SERVER).size == (1024, 1024)
    assert budget.used_bytes == 1024 * 1024 * 7


def test_budget_is_per_request_total_not_per_image():
    png = _png(512, 512, "RGB")  # 768 KiB each
    with use_budget(MediaBudget(max_decoded_bytes=2 << 20)):
        load_image(png, SERVER)
        load_image(png, SERVER)
        with pytest.raises(BadRequestError, match="media_too_large|MiB"):
            load_image(png, SERVER)
    load_image(png, SERVER)  # no budget outside a request: the CLI and Python API are not limited


def test_image_token_estimate_refuses_before_decoding():
    png = _png(2000, 2000, "RGB")
    with use_budget(MediaBudget(max_decoded_bytes=1 << 30, max_tokens=100, pixels_per_token=28 * 28,
                                image_max_pixels=2000 * 2000)):
        with pytest.raises(BadRequestError, match="about 5102 tokens") as info:
            load_image(png, SERVER)
    assert info.value.code == "context_length_exceeded"


def test_video_is_charged_from_metadata_before_decoding():
    video = _mp4(40, 256)  # 40 frames at 1 fps: all 40 sampled, 256x256x3 each = 7.5 MiB
    limits = MediaLimits(fps=2.0)
    with use_budget(MediaBudget(max_decoded_bytes=4 << 20)):
        started = time.monotonic()
        with pytest.raises(BadRequestError, match="40 frames of 256x256 video"):
            load_video(video, SERVER, limits)
        assert time.monotonic() - started < 1
    with use_budget(MediaBudget(max_decoded_bytes=16 << 20)):
        assert load_video(video, SERVER, limits).num_frames == 40


@pytest.mark.parametrize("head, name", [
    (b"\x00\x00\x00\x1cftypisom", "mov"), (b"\x1a\x45\xdf\xa3\x01", "matroska"), (b"RIFF\0\0\0\0AVI ", "avi"),
    (b"RIFF\0\0\0\0WAVE", "wav"), (b"OggS\0", "ogg"), (b"fLaC", "flac"), (b"ID3\x04", "mp3"),
    (b"\xff\xfb\x90", "mp3"), (b"\xff\xf1\x50", "aac"), (b"GIF89a", "gif"),
    (b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\n", None), (b"#EXTM3U\n#EXT-X-VERSION:3\n", None),
    (b"ffconcat version 1.0\nfile 'http://x/y'\n", None), (b"<?xml", None),
])
def test_container_sniffing_allows_known_formats_only(head, name):
    assert sniff_container(head) == name


def _udp_socket_count() -> int:
    import os
    from pathlib import Path

    inodes = {line.split()[9] for table in ("/proc/net/udp", "/proc/net/udp6")
              for line in Path(table).read_text().splitlines()[1:]}
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        count += target.startswith("socket:[") and target[8:-1] in inodes
    return count


@pytest.mark.parametrize("payload", [
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 5353 RTP/AVP 96\r\n"
    b"a=rtpmap:96 H264/90000\r\n",
    b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n",
])
def test_no_network_protocol_from_a_data_uri(payload):
    uri = "data:video/mp4;base64," + base64.b64encode(payload).decode()
    before = _udp_socket_count()
    started = time.monotonic()
    with pytest.raises(BadRequestError, match="not in a supported container format") as info:
        load_video(uri, SERVER)
    assert time.monotonic() - started < 1
    assert info.value.code == "unsupported_media_format"
    assert _udp_socket_count() == before
    with pytest.raises(BadRequestError, match="not in a supported container format"):
        load_audio("data:audio/wav;base64," + base64.b64encode(payload).decode(), SERVER)


class _Trickle(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(30):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


def test_fetch_deadline_is_total_not_per_read():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        policy = MediaPolicy(timeout=1.0)  # each read returns within 0.2 s; the whole would take 6 s
        started = time.monotonic()
        with pytest.raises(BadRequestError, match="took longer than 1s") as info:
            fetch_url(f"http://127.0.0.1:{server.server_address[1]}/x", policy)
        assert time.monotonic() - started < 2.0
        assert info.value.code == "media_timeout"
    finally:
        server.shutdown()


@pytest.mark.parametrize("host", ["[2002:7f00:1::]", "[2002:a00:1::1]", "[64:ff9b::7f00:1]", "[64:ff9b:1::a00:1]",
                                  "[::127.0.0.1]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]"])
def test_ipv6_forms_of_private_ipv4_are_refused(host):
    with pytest.raises(BadRequestError, match="non-public") as info:
        check_url(f"http://{host}/x.png", SERVER)
    assert info.value.code == "media_url_forbidden"


def test_embedded_ipv4_of_each_form():
    import ipaddress

    forms = {"2002:7f00:1::": "127.0.0.1", "64:ff9b::a00:1": "10.0.0.1", "::ffff:10.0.0.1": "10.0.0.1",
             "2001:0:4136:e378:8000:63bf:80ff:fffe": "127.0.0.1", "::192.168.0.1": "192.168.0.1"}
    for v6, v4 in forms.items():
        assert str(embedded_ipv4(ipaddress.IPv6Address(v6))) == v4
    assert embedded_ipv4(ipaddress.IPv6Address("2606:4700::1111")) is None
    assert embedded_ipv4(ipaddress.IPv6Address("::1")) is None


@pytest.mark.parametrize("url", ["ftp://example.com/x.png", "gopher://example.com/", "rtsp://10.0.0.1/cam"])
def test_other_schemes_say_scheme_not_allowed(url):
    with pytest.raises(BadRequestError, match="scheme .* is not allowed") as info:
        read_media(url, SERVER)
    assert info.value.code == "media_scheme_forbidden"


def test_bounded_pool_queues_then_refuses():
    async def main() -> None:
        pool = BoundedPool("media", workers=1, max_queue=1)
        release = threading.Event()
        first = asyncio.ensure_future(pool.run(release.wait, 5))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(pool.run(lambda: "queued"))
        await asyncio.sleep(0.05)
        with pytest.raises(OverloadedError, match="media queue is full"):
            await pool.run(lambda: "refused")
        release.set()
        assert await first is True and await second == "queued"
        pool.shutdown()

    asyncio.run(main())


def test_pool_threads_see_the_request_budget():
    async def main() -> None:
        pool = BoundedPool("media", workers=1, max_queue=None)
        budget = MediaBudget(max_decoded_bytes=1)
        with use_budget(budget):
            from swiftops.media.budget import current_budget
            assert await pool.run(current_budget) is budget
        pool.shutdown()

    asyncio.run(main())


def test_token_id_prompts_skip_the_text_pool_text_prompts_use_it():
    from swiftops.media.worker_pools import tokenize_off_loop
    from swiftops.protocol import InferRequest

    def where(request):
        return threading.current_thread().name

    async def both():
        ids = await tokenize_off_loop(InferRequest(prompt=[5, 6, 7]), where, None)
        text = await tokenize_off_loop(InferRequest(prompt="hello"), where, None)
        chat = await tokenize_off_loop(InferRequest(messages=[{"role": "user", "content": "hi"}]), where, None)
        huge = await tokenize_off_loop(InferRequest(prompt=[5] * 70_000), where, None)
        return ids, text, chat, huge

    ids, text, chat, huge = asyncio.run(both())
    assert ids == threading.current_thread().name  # inline: nothing to tokenize
    assert all(name.startswith("swiftops-tokenizer") for name in (text, chat, huge))  # huge: off the loop still
