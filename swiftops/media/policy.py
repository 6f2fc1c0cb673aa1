"""What a media item may point at: local files, and which hosts may resolve to private addresses.

The Python API and the CLI trust their user (local paths and any URL work); the server does not:
a client's local path is refused unless `--allow_local_media`, and a URL whose host resolves to a
private, loopback, link-local or otherwise non-public address (or redirects to one) is refused unless
its host is in `--allowed_media_domains` (ms-swift's server reads whatever a client names).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swiftops.protocol.settings import MediaSettings

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 64 << 20
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class MediaPolicy:
    allow_local_media: bool = True
    allow_private_urls: bool = True
    allowed_media_domains: tuple[str, ...] = field(default_factory=tuple)
    timeout: float = DEFAULT_TIMEOUT
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = MAX_REDIRECTS

    @classmethod
    def permissive(cls, settings: MediaSettings | None = None) -> MediaPolicy:
        """For the Python API and the CLI: the user's own files and network."""
        if settings is None:
            return cls()
        return cls(
            timeout=settings.media_timeout,
            max_bytes=settings.media_max_bytes,
            allowed_media_domains=tuple(settings.allowed_media_domains),
        )

    @classmethod
    def for_server(cls, settings: MediaSettings | None = None) -> MediaPolicy:
        """For requests from clients: no local files and no private networks unless the settings allow them."""
        settings = settings or MediaSettings()
        return cls(
            allow_local_media=settings.allow_local_media,
            allow_private_urls=False,
            allowed_media_domains=tuple(
                d.strip().lower().rstrip(".") for d in settings.allowed_media_domains if d.strip()
            ),
            timeout=settings.media_timeout,
            max_bytes=settings.media_max_bytes,
        )

    def host_allowed(self, host: str) -> bool:
        """True if `host` is listed in allowed_media_domains (a listed name covers its subdomains)."""
        host = host.lower().rstrip(".")
        return any(host == d or host.endswith("." + d) for d in self.allowed_media_domains)
