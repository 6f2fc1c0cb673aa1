"""Fetching a media URL with a timeout, a size cap and SSRF checks on every hop of a redirect chain."""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

from swiftops.media.policy import MediaPolicy
from swiftops.protocol.errors import BadRequestError

_REDIRECTS = {301, 302, 303, 307, 308}


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadRequestError(f"cannot resolve the media URL's host {host!r}: {exc.strerror}", param="media") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]  # an IP sockaddr: str host


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64, IPv4-compatible), if any:
    a route to it may reach that IPv4 host, so it is judged as that host."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or address in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0 and int(address) > 1:  # ::a.b.c.d (deprecated IPv4-compatible); not :: or ::1
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None and not _is_public(inner):
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def check_url(url: str, policy: MediaPolicy) -> None:
    """Refuse URLs a client may not make the server fetch: other schemes, and non-public targets unless allowed."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise BadRequestError(
            f"media URL scheme {parts.scheme!r} is not allowed; send an http(s) URL, a data: URI or base64 data",
            param="media",
            code="media_scheme_forbidden",
        )
    if not parts.hostname:
        raise BadRequestError(f"media URL {url[:200]!r} has no host", param="media")
    if policy.allow_private_urls or policy.host_allowed(parts.hostname):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # Every address the name resolves to must be public: a name with one private address is refused.
    # (The HTTP client resolves again when it connects; a DNS answer that changes in between is not caught.)
    for address in _addresses(parts.hostname, port):
        if not _is_public(address):
            raise BadRequestError(
                f"media URL host {parts.hostname!r} resolves to a non-public address ({address}); the server does not "
                f"fetch from private, loopback or link-local networks (list the host in --allowed_media_domains to "
                f"allow it)",
                param="media",
                code="media_url_forbidden",
            )


def fetch_url(url: str, policy: MediaPolicy) -> bytes:
    """The body of `url`, following at most `policy.max_redirects` redirects, each checked like the first URL.

    `policy.timeout` bounds the whole fetch (connects, redirects and every read together), not each read: a
    server sending one byte a second would otherwise hold a media worker for as long as it likes."""
    import httpx

    deadline = time.monotonic() + policy.timeout
    with httpx.Client(follow_redirects=False, timeout=policy.timeout, trust_env=policy.allow_private_urls) as client:
        for _ in range(policy.max_redirects + 1):
            check_url(url, policy)
            try:
                remaining = _remaining(deadline, url, policy)
                with client.stream("GET", url, timeout=httpx.Timeout(remaining)) as response:
                    if response.status_code in _REDIRECTS and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        raise BadRequestError(
                            f"fetching media URL {url[:200]!r} failed: HTTP {response.status_code}", param="media"
                        )
                    return _read_capped(response, url, policy, deadline)
            except httpx.TimeoutException:
                raise BadRequestError(
                    f"fetching media URL {url[:200]!r} timed out after {policy.timeout:g}s", param="media"
                ) from None
            except httpx.HTTPError as exc:
                raise BadRequestError(f"fetching media URL {url[:200]!r} failed: {exc}", param="media") from None
    raise BadRequestError(f"media URL {url[:200]!r}: more than {policy.max_redirects} redirects", param="media")


def _remaining(deadline: float, url: str, policy: MediaPolicy) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BadRequestError(
            f"fetching media URL {url[:200]!r} took longer than {policy.timeout:g}s (--media_timeout)",
            param="media",
            code="media_timeout",
        )
    return remaining


def _read_capped(response, url: str, policy: MediaPolicy, deadline: float) -> bytes:
    max_bytes = policy.max_bytes
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(url, max_bytes)
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        _remaining(deadline, url, policy)  # a trickle of bytes keeps each read short but not the whole
        size += len(chunk)
        if size > max_bytes:  # a server that lies about (or omits) Content-Length is cut off here
            raise _too_large(url, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: str, max_bytes: int) -> BadRequestError:
    return BadRequestError(
        f"media at {url[:200]!r} is larger than the {max_bytes} byte limit", param="media", code="media_too_large"
    )
