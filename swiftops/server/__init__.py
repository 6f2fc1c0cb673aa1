"""The OpenAI-compatible HTTP server: `create_app(engine, settings)` (routes, auth, admission, metrics)."""

from swiftops.server.app import create_app

__all__ = ["create_app"]
