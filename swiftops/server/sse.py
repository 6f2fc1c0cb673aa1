"""Server-sent events as OpenAI sends them (`data: {json}\\n\\n` ... `data: [DONE]\\n\\n`), and the watch
for clients that go away.

`EventStreamResponse` listens for `http.disconnect` while it streams and cancels the producer at once,
so a vanished client's generation is aborted even while no token is being sent (queued, or in prefill).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from swiftops.server.errors import ClientDisconnected

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"
# The OpenAPI description of a streamed answer (routes with stream=true).
STREAM_DOC = {
    "text/event-stream": {
        "schema": {"type": "string", "description": "`data: {chunk}` events, then `data: [DONE]` (with stream=true)"}
    }
}


# Line separators that JSON allows raw inside strings but that some SSE clients split lines on (Python's
# str.splitlines, JavaScript line readers): escaped, an event's data stays on one line.
_LINE_BREAKING = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


def sse_event(json_text: str) -> bytes:
    """One event for a JSON text; U+2028, U+2029 and U+0085 (only ever inside JSON strings) become escapes."""
    return b"data: " + json_text.translate(_LINE_BREAKING).encode("utf-8") + b"\n\n"


_json = msgspec.json.Encoder()
# The same three characters as UTF-8 bytes inside encoded JSON, and their escapes.
_LINE_BREAKING_BYTES = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def json_bytes(value: Any) -> bytes:
    """A JSON-able value (dicts, lists, str...) serialized once by msgspec, safe on one SSE data line."""
    data = _json.encode(value)
    if b"\xe2\x80" in data or b"\xc2\x85" in data:
        for raw, escaped in _LINE_BREAKING_BYTES:
            data = data.replace(raw, escaped)
    return data


def json_event(value: Any) -> bytes:
    """One event for a JSON-able value; the hot path of a stream."""
    return b"data: " + json_bytes(value) + b"\n\n"


# Stands for the one string that changes from chunk to chunk of a choice (`TextChunkEvents`).
_TEXT_SLOT = "\x00swiftops-text\x00"
_TEXT_SLOT_JSON = json_bytes(_TEXT_SLOT)


class TextChunkEvents:
    """The events of a stream's middle chunks, where only a choice's text changes: per choice, the chunk from
    `chunk(index, text)` is encoded once with a placeholder text and split around it (at its last occurrence: a
    model name before it may hold anything), so each event is `head + json_bytes(text) + tail`, byte for byte
    `json_event(chunk(index, text))` for the price of encoding the text alone."""

    __slots__ = ("_chunk", "templates")

    def __init__(self, chunk: Callable[[int, str], Any]) -> None:
        self._chunk = chunk
        self.templates: dict[int, tuple[bytes, bytes]] = {}

    def event(self, index: int, text: str) -> bytes:
        template = self.templates.get(index)
        if template is None:
            head, _, tail = json_event(self._chunk(index, _TEXT_SLOT)).rpartition(_TEXT_SLOT_JSON)
            template = self.templates[index] = (head, tail)
        return template[0] + json_bytes(text) + template[1]


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising ClientDisconnected) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()  # the engine aborts the generation and frees its slot
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected()


class EventStreamResponse(Response):
    """A response streaming `events` (already framed bytes).

    `on_close(disconnected)` runs exactly once when the stream ends, fails or the client leaves.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_close: Callable[[bool], Awaitable[None]],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=200)
        self.events = events
        self.on_close = on_close
        self.extra_headers = headers or {}

    async def _produce(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._raw_headers()})
        async for event in self.events:
            # `[DONE]` and the end of the body in one write (one syscall less per stream)
            last = event is DONE
            await send({"type": "http.response.body", "body": event, "more_body": not last})
            if last:
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _raw_headers(self) -> list[tuple[bytes, bytes]]:
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **{k.lower(): v for k, v in self.extra_headers.items()},
        }
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = False
        try:
            await until_disconnected(receive, self._produce(send))
        except ClientDisconnected:
            disconnected = True
        except OSError:  # the socket broke while sending
            disconnected = True
        finally:
            with contextlib.suppress(Exception):
                await self.events.aclose()  # type: ignore[attr-defined]
            await self.on_close(disconnected)


def as_json_event(model: Any) -> bytes:
    return sse_event(model.model_dump_json(exclude_none=True))
