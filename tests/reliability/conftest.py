"""One real `swiftops deploy` process for the reliability suite: tiny model, API key, --verbose, and the
test-only fault hook (swiftops/engines/pt/fault_injection.py) armed with two markers.

Test modules run with --import-mode=importlib and cannot import this file: what they share are fixtures.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import httpx
import pytest

from tests.server_process import ServerProcess

API_KEY = "sk-reliability-5b1c0e"
# A prompt containing one of these makes the engine step holding it raise (see fault_injection.py).
ERROR_MARKER = "@@boom@@"
OOM_MARKER = "@@oom@@"
FAULTS = f"error:{ERROR_MARKER},oom:{OOM_MARKER}"
# A credential in the server's environment that must never reach its log.
HF_TOKEN_CANARY = "hf_reliabilityCanaryToken0123456789"


@pytest.fixture(scope="session")
def rel_api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def hf_token_canary() -> str:
    return HF_TOKEN_CANARY


@pytest.fixture(scope="session")
def markers() -> dict[str, str]:
    return {"error": ERROR_MARKER, "oom": OOM_MARKER}


@pytest.fixture(scope="session")
def rel_server(tiny_model_dir):
    process = ServerProcess(["--model", str(tiny_model_dir), "--served_model_name", "tiny", "--api_key", API_KEY,
                             "--max_concurrency", "64", "--max_queue", "512", "--max_batch_size", "32",
                             "--verbose", "true"], env={"SWIFTOPS_FAULT_INJECT": FAULTS, "HF_TOKEN": HF_TOKEN_CANARY})
    with process:
        yield process


@pytest.fixture()
def rel_http(rel_server):
    with httpx.Client(base_url=rel_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


def metric_value(text: str, name: str, labels: str = "") -> float:
    """A sample's value from Prometheus text (0 when the series does not exist yet)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
    return 0.0


@pytest.fixture()
def rel_metric(rel_server) -> Callable[..., float]:
    """rel_metric(name, labels='') -> the value now on the reliability server's /metrics."""
    def read(name: str, labels: str = "") -> float:
        return metric_value(httpx.get(rel_server.url + "/metrics", timeout=10).text, name, labels)
    return read


@pytest.fixture()
def assert_still_serving(rel_http) -> Callable[[], None]:
    """A valid chat request after the abuse: it must still get its whole answer."""
    def check() -> None:
        response = rel_http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "still ok?"}],
                                                               "max_tokens": 3, "temperature": 0})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 3
    return check


def openai_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture()
def error_shape() -> Callable[[httpx.Response], dict[str, Any]]:
    return openai_error


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """(status, text, usage) of one streamed chat request (usage from stream_options.include_usage)."""
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", "/v1/chat/completions",
                             json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.text, {}
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return 500, json.dumps(chunk), {}
                for choice in chunk["choices"]:
                    text.append(choice["delta"].get("content") or "")
                usage = chunk.get("usage") or usage
    return 200, "".join(text), usage


@pytest.fixture()
def streamer() -> Callable[..., Any]:
    return stream_chat


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
