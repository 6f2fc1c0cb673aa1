"""Request body size limit: 413 in OpenAI's shape, checked from Content-Length before reading and
while reading a chunked body, so an oversized upload never sits in memory whole.
"""
from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swiftops.server.errors import PayloadTooLargeError, error_response

# Room for a few base64 images or a short video in one request.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"the request body is larger than the server's limit of {limit // (1024 * 1024)} MiB; "
                                f"send smaller media (or a URL instead of base64)", code="request_too_large")


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(_too_large(self.max_bytes))(scope, receive, send)
            return
        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _too_large(self.max_bytes)  # stops the route's body read here
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # FastAPI answers a failed body read with its own 400; the 413 below replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await error_response(_too_large(self.max_bytes))(scope, receive, send)
