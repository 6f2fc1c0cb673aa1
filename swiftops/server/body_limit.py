"""The request body size limit (RequestGate enforces it: 413 in OpenAI's shape, from Content-Length before
reading, and while reading a chunked body, so an oversized upload never sits in memory whole)."""

from __future__ import annotations

from swiftops.server.errors import PayloadTooLargeError

# Room for a few base64 images or a short video in one request.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is larger than the server's limit of {limit // (1024 * 1024)} MiB; "
        f"send smaller media (or a URL instead of base64)",
        code="request_too_large",
    )
