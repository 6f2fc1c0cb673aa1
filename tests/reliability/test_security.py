"""Security: the API key guards every route but the probes (and the documented open pages), is compared in
constant time and never logged; neither are other credentials or base64 media; the server refuses to fetch media
from private, loopback and link-local addresses (redirects included) and local paths unless allowed; request
bodies are size-limited, chunked ones too; the chart runs the container as non-root.

Covered elsewhere and run by `make reliability` too (not duplicated here): the images' USER 1000:1000
(tests/manifest/test_docker.py), manifests refusing a plain-text key (tests/manifest/test_loader.py), `swiftops
render`/`apply` never printing a secret (tests/manifest/test_apply.py), the media policy unit by unit
(tests/media/test_fetch.py).
"""
from __future__ import annotations

import base64
import inspect
import io
import re
import socket
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.testclient import TestClient

from swiftops.engines.client import InferClient
from swiftops.protocol.settings import ServerSettings
from swiftops.server import auth
from swiftops.server.app import create_app
from tests.server_process import ServerProcess
from swiftops.server.ui import UI_PATHS

CHAT = "/v1/chat/completions"
REPO = Path(__file__).resolve().parents[2]
# Open without the key, on purpose: Kubernetes probes, Prometheus (unless --metrics_require_key), and the web UI's
# page and assets (the page asks for the key itself). Any other route that answers without the key is a hole.
DOCUMENTED_OPEN = {"/health", "/ready", "/metrics", *UI_PATHS}


def _routes(app) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, re.sub(r"\{[^}]+\}", "x", route.path)))
    return found


def test_every_route_of_the_full_app_needs_the_key_but_the_documented_open_ones(rel_server, rel_api_key):
    """The app with everything switched on (web UI included), route by route, as the app itself lists them."""
    engine = InferClient(base_url=rel_server.url + "/v1", api_key=rel_api_key)
    try:
        app = create_app(engine, ServerSettings(api_key="the-key", ui=True))
    finally:
        engine.close()
    client = TestClient(app)  # no lifespan: nothing here generates
    routes = _routes(app)
    assert ("POST", CHAT) in routes and ("GET", "/") in routes and ("GET", "/openapi.json") in routes
    answered_without_key = set()
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer not-the-key"}, {"Authorization": "the-key"}):
            response = client.request(method, path, headers=headers, json={})
            if response.status_code != 401:
                answered_without_key.add(path)
            else:
                assert response.json()["error"]["code"] == "invalid_api_key"
        assert client.request(method, path, headers={"Authorization": "Bearer the-key"}, json={}).status_code != 401
    assert answered_without_key <= DOCUMENTED_OPEN, answered_without_key - DOCUMENTED_OPEN
    for path in ("/v1/not-a-route", "/admin", "/../etc/passwd", "/static/../../x"):
        assert client.get(path).status_code == 401, path


def test_the_key_is_compared_in_constant_time(rel_server, rel_api_key):
    source = inspect.getsource(auth.ApiKeyCheck)
    assert "hmac.compare_digest(" in source
    assert not re.search(r"(==|!=)\s*self\.api_key|self\.api_key\s*(==|!=)", source)  # no early-exit compare
    near_misses = [rel_api_key[:-1], rel_api_key + "x", rel_api_key[:-1] + chr(ord(rel_api_key[-1]) ^ 1),
                   rel_api_key.upper(), "x" + rel_api_key, "-"]
    for key in near_misses:
        response = httpx.get(rel_server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401, key
    ok = httpx.get(rel_server.url + "/v1/models", headers={"Authorization": f"bearer {rel_api_key}"})
    assert ok.status_code == 200  # the scheme is case-insensitive (RFC 7235), the key is not


def test_no_key_token_or_base64_media_in_the_verbose_log(rel_server, rel_http, rel_api_key, hf_token_canary):
    media = base64.b64encode(b"\x89PNG canary media bytes " * 40).decode()
    wrong_key = "sk-wrong-canary-key-4242"
    rel_http.post(CHAT, json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{media}"}}]}]})
    rel_http.post(CHAT, json={"messages": [{"role": "user", "content": "plain"}], "max_tokens": 2,
                              "user": f"Bearer {rel_api_key}"[:0] + "someone"})
    rel_http.post("/v1/completions", json={"prompt": media, "max_tokens": 2})
    httpx.get(rel_server.url + "/v1/models", headers={"Authorization": f"Bearer {wrong_key}"})
    log = rel_server.output()
    assert " request " in log and "elided" in log  # --verbose did log the bodies, media elided
    for secret in (rel_api_key, wrong_key, hf_token_canary, media[:64], media[-64:]):
        assert secret not in log, secret[:12]


def test_a_chunked_body_over_the_limit_is_refused(rel_server, rel_api_key):
    """No Content-Length to check up front: the limit is enforced while reading (32 MiB by default)."""
    with socket.create_connection((rel_server.host, rel_server.port), timeout=30) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {rel_api_key}\r\n"
                     f"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"a" * (1 << 20)
        try:
            for _ in range(40):
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before we finished sending
        answer = b""
        while b"}}" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request_too_large" in answer


def test_the_chart_runs_the_container_as_non_root():
    values = yaml.safe_load((REPO / "helm/swiftops/values.yaml").read_text())
    pod = values["podSecurityContext"] if "podSecurityContext" in values else values.get("securityContext", {})
    flat = {**values.get("podSecurityContext", {}), **values.get("securityContext", {})}
    assert flat.get("runAsNonRoot") is True and flat.get("runAsUser", 0) != 0, pod
    assert flat.get("allowPrivilegeEscalation") is False
    templates = "".join(p.read_text() for p in (REPO / "helm/swiftops/templates").glob("*.*"))
    assert "securityContext" in templates  # the values reach the pod spec


# ---- media fetching (SSRF) on a real multimodal server -------------------------------------------------


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm_dir):
    # localhost is allowed by name (as an operator would list an internal media host); its IP is not.
    with ServerProcess(["--model", str(tiny_vlm_dir), "--allowed_media_domains", "localhost"]) as server:
        yield server


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _ask_about(server, url: str) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "what colour?"}]}], "max_tokens": 2}
    return httpx.post(server.url + CHAT, json=body, timeout=60)


def test_media_urls_to_private_loopback_and_link_local_addresses_are_refused(vlm_server, media_server):
    media_server.routes["/red.png"] = (200, {"Content-Type": "image/png"}, _png())
    port = media_server.server_address[1]
    refused = [f"http://127.0.0.1:{port}/red.png", f"http://[::1]:{port}/red.png", f"http://2130706433:{port}/red.png",
               f"http://127.1:{port}/red.png", f"http://0.0.0.0:{port}/red.png", "http://169.254.169.254/latest/",
               "http://[fe80::1]/x.png", "http://10.0.0.1/x.png", "http://192.168.1.1/x.png", "http://172.16.0.1/x.png",
               "http://[::ffff:127.0.0.1]/x.png", "file:///etc/passwd", "/etc/passwd", "gopher://127.0.0.1/x"]
    for url in refused:
        response = _ask_about(vlm_server, url)
        assert response.status_code == 400, (url, response.text)
        assert response.json()["error"]["param"] == "media", url
    allowed = _ask_about(vlm_server, f"http://localhost:{port}/red.png")  # listed in --allowed_media_domains
    assert allowed.status_code == 200, allowed.text


def test_redirects_to_forbidden_addresses_are_refused(vlm_server, media_server):
    port = media_server.server_address[1]
    media_server.routes["/red.png"] = (200, {"Content-Type": "image/png"}, _png())
    for target in (f"http://127.0.0.1:{port}/red.png", "http://169.254.169.254/latest/meta-data/",
                   "http://10.0.0.1/x.png", "file:///etc/passwd"):
        media_server.routes["/hop"] = (302, {"Location": target}, b"")
        response = _ask_about(vlm_server, f"http://localhost:{port}/hop")
        assert response.status_code == 400, (target, response.text)
    media_server.routes["/hop"] = (302, {"Location": f"http://localhost:{port}/red.png"}, b"")
    assert _ask_about(vlm_server, f"http://localhost:{port}/hop").status_code == 200  # an allowed hop is followed


def test_local_paths_are_refused(tmp_path, vlm_server):
    image = tmp_path / "red.png"
    image.write_bytes(_png())
    for path in (str(image), f"file://{image}"):
        assert _ask_about(vlm_server, path).json()["error"]["code"] == "local_media_forbidden", path


@pytest.mark.slow  # a second server; the policy itself is unit-tested in tests/media/test_fetch.py
def test_local_paths_are_served_when_allowed(tiny_vlm_dir, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(_png())
    with ServerProcess(["--model", str(tiny_vlm_dir), "--allow_local_media", "true"]) as permissive:
        assert _ask_about(permissive, str(image)).status_code == 200


def test_bad_media_on_a_multimodal_server_is_a_400(vlm_server):
    """Media tags without media, invalid base64, bytes that are no image: 400, and the server goes on."""
    bad = [
        {"messages": [{"role": "user", "content": "<image>what colour?"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                     "image_url": {"url": "data:image/png;base64,!!not-base64!!"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(b"no image at all").decode()}}]}]},
    ]
    for body in bad:
        response = httpx.post(vlm_server.url + CHAT, json={**body, "max_tokens": 2}, timeout=60)
        assert response.status_code == 400, (body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    good = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert _ask_about(vlm_server, good).status_code == 200
