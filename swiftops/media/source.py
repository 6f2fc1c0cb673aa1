"""Where a media item's bytes come from: a local path, an http(s) URL, a `data:` URI, base64 text or raw bytes.

`read_media` answers either bytes or an existing local path (decoders read files without copying them).
PIL images and decoded arrays are handled by the loaders before they get here.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from typing import Any

from swiftops.media.fetch import fetch_url
from swiftops.media.policy import MediaPolicy
from swiftops.protocol.errors import BadRequestError

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),", re.IGNORECASE)
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")


@dataclass(frozen=True)
class MediaSource:
    data: bytes | None = None  # the bytes, or
    path: str | None = None  # an existing local file
    mime: str | None = None  # from a data: URI, when given


def _decode_base64(text: str, what: str) -> bytes:
    text = re.sub(r"\s+", "", text)
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"{what} is not valid base64", param="media") from None


def _checked_size(data: bytes, policy: MediaPolicy, what: str) -> bytes:
    if len(data) > policy.max_bytes:
        raise BadRequestError(
            f"{what} is {len(data)} bytes, over the {policy.max_bytes} byte limit",
            param="media",
            code="media_too_large",
        )
    return data


def _local(path: str, policy: MediaPolicy) -> MediaSource:
    if not policy.allow_local_media:
        raise BadRequestError(
            "local file paths are not accepted as media by this server (start it with "
            "--allow_local_media to allow them); send an http(s) URL or base64 data instead",
            param="media",
            code="local_media_forbidden",
        )
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise BadRequestError(
            f"media file {path!r} does not exist (or is not a file); give an existing path, an "
            "http(s) URL or base64 data",
            param="media",
        )
    size = os.path.getsize(path)
    if size > policy.max_bytes:
        raise BadRequestError(
            f"media file {path!r} is {size} bytes, over the {policy.max_bytes} byte limit",
            param="media",
            code="media_too_large",
        )
    return MediaSource(path=path)


def _looks_like_base64(text: str) -> bool:
    # A path has dots or is short; base64 media is long and uses the base64 alphabet only.
    return len(text) >= 64 and _BASE64_CHARS.match(text) is not None


def read_media(item: Any, policy: MediaPolicy, kind: str = "media") -> MediaSource:
    """Classify and read one media item (see the module docstring). Errors say what was wrong and what to send."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return MediaSource(data=_checked_size(bytes(item), policy, f"the {kind} bytes"))
    if isinstance(item, dict):  # ms-swift datasets: {"bytes": ..., "path": ...}; OpenAI: {"url": ...}
        if item.get("bytes") is not None:
            return read_media(item["bytes"], policy, kind)
        for key in ("url", "path", kind, "data"):
            if item.get(key):
                return read_media(item[key], policy, kind)
        raise BadRequestError(f"a {kind} given as an object needs a 'url', 'path' or 'bytes' field", param="media")
    if not isinstance(item, str) or not item.strip():
        raise BadRequestError(
            f"a {kind} must be a path, an http(s) URL, base64 data or a data: URI, got {type(item).__name__}",
            param="media",
        )
    text = item.strip()
    lowered = text[:16].lower()
    if lowered.startswith("data:"):
        match = _DATA_URI.match(text)
        if match is None:
            raise BadRequestError(
                f"malformed data: URI for a {kind}; expected data:<mime>;base64,<data>", param="media"
            )
        payload = text[match.end() :]
        if ";base64" not in (match.group("params") or "").lower():
            from urllib.parse import unquote_to_bytes

            data = unquote_to_bytes(payload)
        else:
            data = _decode_base64(payload, f"the {kind} data URI")
        return MediaSource(data=_checked_size(data, policy, f"the {kind} data URI"), mime=match.group("mime"))
    if lowered.startswith(("http://", "https://")):
        return MediaSource(data=fetch_url(text, policy))
    if lowered.startswith("file://"):
        return _local(text[len("file://") :], policy)
    if (scheme := _URL_SCHEME.match(text)) is not None:
        raise BadRequestError(
            f"media URL scheme {scheme.group(1)!r} is not allowed; send an http(s) URL, a data: URI or base64 data",
            param="media",
            code="media_scheme_forbidden",
        )
    if policy.allow_local_media and os.path.isfile(os.path.expanduser(text)):
        return _local(text, policy)
    if _looks_like_base64(text):
        # The decoded size is about 3/4 of the text: refuse an oversized payload before decoding it.
        if len(text) * 3 // 4 > policy.max_bytes + 3:
            raise BadRequestError(
                f"the base64 {kind} is over the {policy.max_bytes} byte limit", param="media", code="media_too_large"
            )
        return MediaSource(data=_checked_size(_decode_base64(text, f"the base64 {kind}"), policy, f"the base64 {kind}"))
    return _local(text, policy)  # a path that does not exist, or local paths refused: the error says which
