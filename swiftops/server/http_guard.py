"""uvicorn's httptools protocol (llhttp, the C parser; as vLLM's server runs) with the guards it lacks: a
timeout for reading a request's headers, a cap on their size, and a timeout for a client that stops reading.

* header timeout: uvicorn's `timeout_keep_alive` runs only between requests. 3,000 connections sending one
  header byte every 10 s (or nothing at all) stayed open indefinitely, with no API key needed. Here a
  connection has `header_timeout` seconds from its first byte (or from connecting, for a silent one) to
  complete its headers; then it is closed.
* header size: llhttp sets no limit of its own, so a client could grow a request head for the whole header
  timeout. Past `MAX_HEAD_BYTES` (the request line and headers) the request gets a 431 that says so and the
  connection is closed (h11, uvicorn's other protocol, answers 400 past its 16 KiB).
* send timeout (nginx's `send_timeout`): a stream whose client never reads fills the socket's buffers, and
  its generation waits on the full buffer for ever, holding its admission slots. Here, when the transport
  has been unable to take more data for `send_timeout` seconds, the connection is aborted: the app sees a
  disconnect, the generation is cancelled and its slots go back.

Why httptools and not h11: every streamed chunk of every client passes the protocol's `send`; h11 frames it
through its state machine (about 10 us a chunk on the 2-core CI machine), httptools' cycle joins three byte
strings (benchmarks/api_server_cpu.py has the A/B).

Behind a reverse proxy, set its timeouts too (nginx: client_header_timeout, send_timeout,
proxy_read_timeout; see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# The request line plus every header name and value, as nginx's default large_client_header_buffers (4 x 8 KiB)
# would take them with room to spare: long bearer tokens and cookies fit.
MAX_HEAD_BYTES = 64 * 1024


class RequestHeadTooLarge(Exception):
    """Raised inside the parser's callbacks: httptools fails the feed and uvicorn calls `send_400_response`,
    which answers 431 instead."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 30.0
    send_timeout: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._reading_head = True  # a request's head is incomplete: from connecting or a message's first byte
        self._head_bytes = 0

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._reading_head and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request headers in %gs", self.header_timeout)
            self.transport.abort()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()  # a connection that never sends a byte

    # ---- the parser's callbacks ---------------------------------------------------------------------------
    def on_message_begin(self) -> None:  # the next request on a kept-alive connection has started
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0
        self._start_header_timer()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise RequestHeadTooLarge()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refused: for a head past the cap, 431 and what to do."""
        if self._head_bytes <= MAX_HEAD_BYTES:
            super().send_400_response(msg)
            return
        self.logger.info("closing a connection whose request head passed %d bytes", MAX_HEAD_BYTES)
        body = (
            f"request line and headers larger than {MAX_HEAD_BYTES // 1024} KiB; send shorter headers "
            f"(large cookies or tokens)"
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()

    # ---- flow control -------------------------------------------------------------------------------------
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout, self._send_deadline)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_deadline(self) -> None:
        self._send_timer = None
        if self.flow.write_paused:  # resume_writing cancels this timer: still paused means still stuck
            self.logger.info(
                "closing a connection whose client read nothing for %gs (--send_timeout)", self.send_timeout
            )
            self.transport.abort()  # close() would wait for the client to read the buffered data

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().connection_lost(exc)


def guarded_protocol(header_timeout: float, send_timeout: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these timeouts."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout": header_timeout, "send_timeout": send_timeout},
    )
