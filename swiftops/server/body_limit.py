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

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route's body read: the SwiftopsError handler answers 413.
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
