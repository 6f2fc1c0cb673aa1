"""API-key authentication, checked in front of every route (swiftops.server.gate). Only the probes (and,
optionally, /metrics) are open.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from starlette.datastructures import Headers
from starlette.types import Scope

from swiftops.protocol.errors import AuthenticationError, ConfigError

API_KEY_ENV = "SWIFTOPS_API_KEY"
# Kubernetes probes carry no credentials.
PROBE_PATHS = frozenset({"/health", "/ready"})


def resolve_api_key(value: str | None) -> str | None:
    """The key from --api_key (the key itself, or a path to a file holding it), else SWIFTOPS_API_KEY."""
    value = value if value else os.environ.get(API_KEY_ENV) or None
    if value is None:
        return None
    candidate = Path(value).expanduser()
    try:
        is_file = candidate.is_file()
    except OSError:  # e.g. a long key is not a valid file name
        is_file = False
    if is_file:  # a mounted Kubernetes secret
        key = candidate.read_text(encoding="utf-8").strip()
        if not key:
            raise ConfigError(f"--api_key: the file {value} is empty; put the key in it")
        return key
    if value.startswith(("/", "./", "../", "~/")):
        raise ConfigError(
            f"--api_key: {value} looks like a file path but is not a file; "
            f"give the key itself or an existing file holding it"
        )
    return value


def public_paths(metrics_require_key: bool) -> frozenset[str]:
    return PROBE_PATHS if metrics_require_key else PROBE_PATHS | {"/metrics"}


def _presented_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return token.strip()
    return None


class ApiKeyCheck:
    """The API-key check of every request (RequestGate runs it), so a route added later is protected without
    anyone remembering to protect it."""

    def __init__(self, api_key: str | None, open_paths: frozenset[str]) -> None:
        self.api_key = api_key.encode("utf-8") if api_key else None
        self.open_paths = open_paths

    def refusal(self, scope: Scope, headers: Headers) -> AuthenticationError | None:
        """None when the request may pass, else the 401 to answer."""
        if self.api_key is None or scope["path"] in self.open_paths:
            return None
        presented = _presented_key(headers)
        # compare_digest: the time taken does not tell an attacker how much of the key matched.
        if presented is not None and hmac.compare_digest(presented.encode("utf-8"), self.api_key):
            return None
        reason = "missing" if presented is None else "wrong"
        return AuthenticationError(
            f"API key {reason}: send the server's key as `Authorization: Bearer <key>`", code="invalid_api_key"
        )
