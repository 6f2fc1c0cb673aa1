"""One real `swiftops deploy` process (tiny model, API key, --verbose, --result_path) shared by the server tests.

Test modules run with --import-mode=importlib and cannot import this file: what they share are fixtures.
"""
from __future__ import annotations

from typing import Callable

import httpx
import pytest

from tests.server_process import ServerProcess

API_KEY = "sk-test-7d3f9a"
SERVED_NAME = "tiny-chat"


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def served_name() -> str:
    return SERVED_NAME


@pytest.fixture(scope="session")
def server_results(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("server") / "results.jsonl"



@pytest.fixture(scope="session")
def adapter_names() -> list[str]:
    return ["sql", "poem", "chat"]  # three adapters (issue 6): a mixed burst over them and the base model


@pytest.fixture(scope="session")
def server(tiny_model_dir, server_results, adapter_names, tmp_path_factory, make_lora_adapter):
    root = tmp_path_factory.mktemp("loras")
    adapters = [f"{name}={make_lora_adapter(tiny_model_dir, root / name, seed)}"
                for seed, name in enumerate(adapter_names, start=1)]
    process = ServerProcess(["--model", str(tiny_model_dir), "--served_model_name", SERVED_NAME, "--api_key", API_KEY,
                             "--adapters", *adapters, "--max_concurrency", "64", "--max_queue", "64",
                             "--max_batch_size", "32", "--verbose", "--result_path", str(server_results)])
    with process:
        yield process


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        yield client


def metric_value(text: str, name: str, labels: str = "") -> float:
    """A sample's value from Prometheus text (0 when the series does not exist yet)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return 0.0


@pytest.fixture()
def read_metric(server) -> Callable[..., float]:
    """read_metric(name, labels='') -> the value now on the server's /metrics."""
    def read(name: str, labels: str = "") -> float:
        return metric_value(httpx.get(server.url + "/metrics", timeout=10).text, name, labels)
    return read
