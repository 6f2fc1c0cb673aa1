"""`RequestGate`: the server's one ASGI middleware layer. In order: CORS preflights answered; a request id, the
access-log line and outcome metrics for everything else; the API key; the body size limit.

One layer instead of four (CORS, request log, API key, body limit), because each layer wraps `send`, and a
stream calls `send` once per chunk: one wrapper adds the response headers (X-Request-Id, CORS) and watches
the status. The body is counted only when no Content-Length bounds it (uvicorn holds a request to its
Content-Length), so an ordinary request's `receive` is not wrapped at all.
Plain ASGI, not BaseHTTPMiddleware, which would buffer streams and hide client disconnects.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from swiftops.metrics.prometheus import ServerMetrics
from swiftops.protocol.errors import SwiftopsError
from swiftops.server.auth import ApiKeyCheck
from swiftops.server.body_limit import too_large
from swiftops.server.errors import error_body, error_response
from swiftops.server.request_log import REQUEST_ID_HEADER, access_logger, new_request_id, record_request

# Any origin, no cookies: the API key travels in the Authorization header, which a foreign page only has if
# its user typed it in (`swiftops app --base_url` points a page on another origin at this server).
_CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", b"X-Request-Id, Retry-After"),
]
_PREFLIGHT_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
    (b"access-control-max-age", b"600"),
    (b"content-type", b"text/plain; charset=utf-8"),
]


class RequestGate:
    def __init__(
        self, app: ASGIApp, metrics: ServerMetrics, api_key: str | None, open_paths: Iterable[str], max_body_bytes: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.key = ApiKeyCheck(api_key, frozenset(open_paths))
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cross_origin = "origin" in headers
        if cross_origin and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await _preflight(headers, send)
            return
        start = time.perf_counter()
        request_id = new_request_id(headers.get(REQUEST_ID_HEADER))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        added = [(REQUEST_ID_HEADER.encode(), request_id.encode()), *(_CORS_HEADERS if cross_origin else [])]
        status = 500
        started = False
        length = headers.get("content-length")
        counting = None if length is not None else _CountingReceive(receive, self.max_body_bytes)

        async def gated_send(message: Message) -> None:
            nonlocal status, started
            if counting is not None and counting.over and not started:
                return  # FastAPI answers a failed body read with its own 400; the 413 below replaces it
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        try:
            refusal: SwiftopsError | None = self.key.refusal(scope, headers)
            if refusal is None and length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                refusal = too_large(self.max_body_bytes)
            if refusal is not None:
                await error_response(refusal)(scope, receive, gated_send)
                return
            with contextlib.suppress(_BodyTooLarge):
                await self.app(scope, counting or receive, gated_send)
            if counting is not None and counting.over and not started:
                counting = None
                await error_response(too_large(self.max_body_bytes))(scope, receive, gated_send)
        except Exception as exc:
            # A bug or an engine failure in one request: answer it with a 500 and keep serving the others.
            access_logger.error("request %s failed", request_id, exc_info=True)
            if not started:
                counting = None
                body = error_body(
                    500,
                    f"internal error while serving this request ({type(exc).__name__}); "
                    f"the server log has details under request id {request_id}",
                )
                await JSONResponse(body, status_code=500)(scope, receive, gated_send)
        finally:
            record_request(
                self.metrics, scope, state, request_id, state.get("outcome_status", status), time.perf_counter() - start
            )


class _BodyTooLarge(Exception):
    pass


class _CountingReceive:
    """`receive` for a body without Content-Length (chunked): stops reading past the limit."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.over = False

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.over = True
                raise _BodyTooLarge()  # stops the route's body read here
        return message


async def _preflight(headers: Headers, send: Send) -> None:
    response_headers: list[Any] = list(_PREFLIGHT_HEADERS)
    wanted = headers.get("access-control-request-headers")
    if wanted:
        response_headers.append((b"access-control-allow-headers", wanted.encode("latin-1")))
    response_headers.append((b"content-length", b"2"))
    await send({"type": "http.response.start", "status": 200, "headers": response_headers})
    await send({"type": "http.response.body", "body": b"OK"})
