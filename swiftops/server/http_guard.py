"""uvicorn's h11 protocol with two timeouts it lacks: for reading a request's headers, and for a client that
stops reading its response.

* header timeout: uvicorn's `timeout_keep_alive` runs only between requests. 3,000 connections sending one
  header byte every 10 s (or nothing at all) stayed open indefinitely, with no API key needed. Here a
  connection has `header_timeout` seconds from its first byte (or from connecting, for a silent one) to
  complete its headers; then it is closed.
* send timeout (nginx's `send_timeout`): a stream whose client never reads fills the socket's buffers, and
  its generation waits on the full buffer for ever, holding its admission slots. Here, when the transport
  has been unable to take more data for `send_timeout` seconds, the connection is aborted: the app sees a
  disconnect, the generation is cancelled and its slots go back.

Behind a reverse proxy, set its timeouts too (nginx: client_header_timeout, send_timeout,
proxy_read_timeout; see docs/reliability.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11Protocol(H11Protocol):
    header_timeout: float = 30.0
    send_timeout: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request headers in %gs", self.header_timeout)
            self.transport.abort()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()  # a connection that never sends a byte

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self._start_header_timer()  # the next request on a kept-alive connection has started
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

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


def guarded_protocol(header_timeout: float, send_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for `uvicorn.Config(http=...)` with these timeouts."""
    return type(
        "GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout": header_timeout, "send_timeout": send_timeout}
    )
