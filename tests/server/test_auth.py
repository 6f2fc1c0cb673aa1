"""API key: every route of the app needs it except the probes and /metrics; 401 in OpenAI's shape."""
from __future__ import annotations

import re

import httpx
import pytest

from swiftops.engines.client import InferClient
from swiftops.protocol.settings import ServerSettings
from swiftops.server.app import create_app
from swiftops.server.auth import resolve_api_key
from swiftops.protocol import ConfigError

OPEN = {"/health", "/ready", "/metrics"}


def _app_routes(server, api_key) -> list[tuple[str, str]]:
    """(method, path) of every route the app defines, taken from the app itself (docs and schema included).

    The app is built over an InferClient engine: the same routes, without loading a model here."""
    engine = InferClient(base_url=server.url + "/v1", api_key=api_key)
    try:
        app = create_app(engine, ServerSettings(api_key=api_key))
    finally:
        engine.close()
    routes = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                routes.append((method, re.sub(r"\{[^}]+\}", "x", route.path)))
    return routes


def test_every_route_but_the_probes_needs_the_key(server, api_key):
    routes = _app_routes(server, api_key)
    assert ("POST", "/v1/chat/completions") in routes and ("GET", "/openapi.json") in routes
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": api_key}):
            response = httpx.request(method, server.url + path, headers=headers, json={}, timeout=30)
            if path in OPEN:
                assert response.status_code != 401, (method, path)
            else:
                assert response.status_code == 401, (method, path, headers)
                error = response.json()["error"]
                assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
                assert set(error) == {"message", "type", "param", "code"}
        ok = httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {api_key}"}, json={},
                           timeout=30)
        assert ok.status_code != 401, (method, path)


def test_unknown_routes_need_the_key_too(server):
    assert httpx.get(server.url + "/v1/secret-route").status_code == 401


def test_the_key_never_reaches_the_log(server, api_key, http):
    http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer " + api_key + "x"})
    log = server.output()
    assert "/v1/models 401" in log and "/v1/chat/completions 200" in log
    assert api_key not in log


def test_api_key_from_a_file_or_the_environment(tmp_path, monkeypatch):
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    assert resolve_api_key(str(secret)) == "from-file"
    assert resolve_api_key("plain-key") == "plain-key"
    monkeypatch.setenv("SWIFTOPS_API_KEY", "from-env")
    assert resolve_api_key(None) == "from-env"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        resolve_api_key(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not a file"):
        resolve_api_key(str(tmp_path / "missing"))


def test_metrics_can_require_the_key(server, api_key):
    from starlette.testclient import TestClient

    engine = InferClient(base_url=server.url + "/v1", api_key=api_key)
    try:
        app = create_app(engine, ServerSettings(api_key="front-key", metrics_require_key=True),
                         open_paths={"/ui-page"})
        client = TestClient(app)  # no lifespan needed: these routes do not generate
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer front-key"}).status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/ui-page").status_code == 404  # open, though no route serves it here
    finally:
        engine.close()
