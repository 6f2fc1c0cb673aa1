"""The chat page's routes on the API server: served only with --ui, open without the key while the API stays
keyed, a strict content security policy, and CORS so a page on another origin (`swiftops app --base_url`)
can call the API. The engine is an InferClient on the shared test server; these routes never generate."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from swiftops import InferClient
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import ServerSettings
from swiftops.server.app import create_app
from swiftops.server.ui import create_ui_app, normalize_base_url, render_index


@pytest.fixture()
def engine(server, api_key):
    engine = InferClient(base_url=server.url + "/v1", api_key=api_key)
    yield engine
    engine.close()


def test_no_page_without_ui(engine):
    client = TestClient(create_app(engine, ServerSettings(api_key="front-key")))
    assert client.get("/").status_code == 401  # not an open path: the key is asked for first
    assert client.get("/", headers={"Authorization": "Bearer front-key"}).status_code == 404


def test_page_and_assets_are_open_and_the_api_is_not(engine):
    client = TestClient(create_app(engine, ServerSettings(api_key="front-key", ui=True)))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<meta name="swiftops-api-base" content="">' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "connect-src 'self';" in policy
    script, style = client.get("/ui/app.js"), client.get("/ui/app.css")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "renderMarkdown" in script.text
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert client.get("/v1/models").status_code == 401
    assert client.get("/docs").status_code == 401
    assert client.get("/ui/missing.js").status_code == 401  # only the page's own files are open


def test_cross_origin_calls_are_allowed_and_errors_readable(engine):
    client = TestClient(create_app(engine, ServerSettings(api_key="front-key")))
    origin = {"Origin": "http://127.0.0.1:7860"}
    preflight = client.options("/v1/chat/completions", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200  # answered before the API key check: preflights carry no key
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    refused = client.get("/v1/models", headers=origin)
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"
    listed = client.get("/v1/models", headers={**origin, "Authorization": "Bearer front-key"})
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("given, normalized", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
    ("https://gpu.example.com/v1/", "https://gpu.example.com"),
    ("https://example.com/qwen/v1", "https://example.com/qwen"),
])
def test_base_url_normalized(given, normalized):
    assert normalize_base_url(given) == normalized


@pytest.mark.parametrize("bad", ["ftp://example.com", "localhost:8000", "example.com", ""])
def test_base_url_must_be_http(bad):
    with pytest.raises(ConfigError, match="not an http"):
        normalize_base_url(bad)


def test_page_alone_points_at_another_server():
    base = 'http://gpu:8000/"><script>alert(1)</script>'
    assert '<script>alert' not in render_index(base)
    client = TestClient(create_ui_app("http://gpu:8000"))
    page = client.get("/")
    assert '<meta name="swiftops-api-base" content="http://gpu:8000">' in page.text
    assert "connect-src 'self' http://gpu:8000;" in page.headers["content-security-policy"]
    assert client.get("/ready").status_code == 200
    assert client.get("/v1/models").status_code == 404
