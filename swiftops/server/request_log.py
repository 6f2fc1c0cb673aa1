"""Request ids, the access log, per-request outcome metrics, verbose body logs and the --result_path file.

One access-log line per request: id, method, path, status, prompt and completion tokens, latency.
Handlers report tokens and special outcomes (499 client gone, 500 after the stream started)
through `scope["state"]`, which Starlette exposes as `request.state`; RequestGate writes the line.
Never logged: the Authorization header (the API key) and media bytes (elided).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from starlette.types import Scope

from swiftops.metrics.prometheus import ServerMetrics

access_logger = logging.getLogger("swiftops.access")
body_logger = logging.getLogger("swiftops.server.body")

REQUEST_ID_HEADER = "x-request-id"
# A client-chosen id is echoed back and logged: keep it short and printable (no log injection).
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BASE64_RUN = re.compile(r"^[A-Za-z0-9+/=\s]{256,}$")
_ELIDE_ABOVE = 256
_MAX_LOGGED_BODY = 16384


def new_request_id(offered: str | None) -> str:
    if offered and _SAFE_REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def elide_media(value: Any) -> Any:
    """A copy of a JSON-like value with data URIs and long base64 strings replaced by a size note."""
    if isinstance(value, dict):
        return {k: elide_media(v) for k, v in value.items()}
    if isinstance(value, list):
        return [elide_media(v) for v in value]
    if (
        isinstance(value, str)
        and len(value) > _ELIDE_ABOVE
        and (value.startswith("data:") or _BASE64_RUN.match(value[:4096]))
    ):
        head = value.split(",", 1)[0] if value.startswith("data:") else "base64"
        return f"<{head}: {len(value)} chars elided>"
    return value


def log_body(request_id: str, kind: str, body: Any) -> None:
    text = json.dumps(elide_media(body), ensure_ascii=False)
    if len(text) > _MAX_LOGGED_BODY:
        text = text[:_MAX_LOGGED_BODY] + f"... <{len(text) - _MAX_LOGGED_BODY} more chars>"
    body_logger.info("%s %s %s", request_id, kind, text)


def _printable(value: str | None) -> str:
    """A client-given string made safe for one log line (no newlines or control characters to forge lines)."""
    if not value:
        return "-"
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in value[:64])


def record_request(
    metrics: ServerMetrics, scope: Scope, state: dict[str, Any], request_id: str, status: int, seconds: float
) -> None:
    """The outcome metric (API routes) and the one access-log line of a finished request."""
    route = getattr(scope.get("route"), "path", None)
    if route is not None and route.startswith("/v1/"):
        metrics.record_outcome(route, status)
    usage = state.get("usage") or {}
    access_logger.info(
        "%s %s %s %d prompt_tokens=%d completion_tokens=%d latency_ms=%.1f client=%s user=%s",
        request_id,
        scope.get("method"),
        scope.get("path"),
        status,
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
        seconds * 1000,
        (scope.get("client") or ("-",))[0],
        _printable(state.get("user")),
    )


class RequestRecorder:
    """Appends one JSON line per finished request to --result_path (media elided)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, request_id: str, route: str, request: Any, response: Any) -> None:
        line = json.dumps(
            {
                "request_id": request_id,
                "time": time.time(),
                "route": route,
                "request": elide_media(request),
                "response": response,
            },
            ensure_ascii=False,
        )
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            # Threads take the lock; the API-server processes of one deployment (--api_server_count) the file's,
            # where the file system has locks.
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line + "\n")  # one write per line, flushed under the lock: rows never interleave
            f.flush()
