"""The chat web page: `/` and its two assets, shipped in swiftops/server/static/ (no build step, no CDN).

The page holds no secrets (the user types the API key into it), so its paths are reachable without the
key; every API route stays protected. The page talks to the API at a base URL given in a <meta> tag:
empty for "this server" (`deploy --ui`, `app --model`), or another server's URL (`app --base_url`).
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from swiftops.protocol.errors import ConfigError
from swiftops.server.ui_text import page_in

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}
UI_PATHS = frozenset({"/", *ASSETS})
API_BASE_PLACEHOLDER = "{{API_BASE_URL}}"


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `.../` or `.../v1` -> `http://host:8000` (the page appends /v1/...)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"--base_url {url!r} is not an http(s) URL; give the server's address, e.g. http://127.0.0.1:8000"
        )
    path = parts.path.rstrip("/").removesuffix("/v1").rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


@cache
def _asset(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _security_headers(api_base_url: str) -> dict[str, str]:
    # Model output is rendered as HTML (markdown): the policy forbids inline and foreign scripts, so a
    # rendering bug cannot run code; data:/blob: carry the attachments' previews.
    connect = "'self'" + (f" {api_base_url}" if api_base_url else "")
    policy = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src 'self' data: blob:; connect-src {connect}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    # no-cache: after an upgrade the browser revalidates instead of running an old app.js.
    return {
        "Content-Security-Policy": policy,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def render_index(api_base_url: str = "", *, title: str | None = None, lang: str = "en") -> str:
    """The page for the API at `api_base_url`, in `lang` (en, zh) and titled `title` (--studio_title)."""
    page = _asset("index.html").replace(API_BASE_PLACEHOLDER, html.escape(api_base_url, quote=True))
    return page_in(page, lang, title)


def mount_ui(app: FastAPI, api_base_url: str = "", *, title: str | None = None, lang: str = "en") -> None:
    """Add `/` and the assets to `app`. The caller opens UI_PATHS in its API-key middleware."""
    headers = _security_headers(api_base_url)
    page = render_index(api_base_url, title=title, lang=lang)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    for path, (name, media_type) in ASSETS.items():

        def serve(name: str = name, media_type: str = media_type) -> Response:
            return Response(_asset(name), media_type=media_type, headers=headers)

        app.add_api_route(path, serve, methods=["GET"], include_in_schema=False)


def create_ui_app(api_base_url: str, *, title: str | None = None, lang: str = "en") -> FastAPI:
    """The page alone, pointed at the server at `api_base_url` (already normalized)."""
    app = FastAPI(title="swiftops app", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health", include_in_schema=False)
    @app.get("/ready", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    mount_ui(app, api_base_url, title=title, lang=lang)
    return app
