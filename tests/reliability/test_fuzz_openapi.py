"""Property-based fuzzing of every operation in the server's own OpenAPI schema (schemathesis): valid and invalid
bodies alike get no 5xx, every 4xx has OpenAI's error shape, and the server keeps serving.

A dedicated server with a short context (--max_model_len 64) keeps each generated request cheap whatever
`n` and `max_tokens` the fuzzer picks; examples per operation are bounded so the fast suite stays fast.
"""
from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.server_process import ServerProcess

KEY = "sk-fuzz"


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir):
    with ServerProcess(["--model", str(tiny_model_dir), "--api_key", KEY, "--max_model_len", "64",
                        "--max_concurrency", "8", "--max_queue", "64"]) as server:
        yield server


@pytest.fixture(scope="module")
def operations(fuzz_server) -> list:
    """Every operation the app publishes (from its live /openapi.json, so a new route is fuzzed too)."""
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json",
                                           headers={"Authorization": f"Bearer {KEY}"})
    found = [result.ok() for result in schema.get_all_operations()]
    assert {"POST /v1/chat/completions", "POST /v1/completions", "GET /v1/models"} <= {op.label for op in found}
    return found


def _check(case, fuzz_server) -> None:
    response = case.call(base_url=fuzz_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code < 500, (case.method, case.path, case.body, response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"message", "type", "param", "code"} == set(body["error"]), body


def _fuzz(operations, fuzz_server, max_examples: int) -> int:
    calls = 0
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                      derandomize=max_examples <= 20, database=None)
            def run(case) -> None:
                nonlocal calls
                calls += 1
                _check(case, fuzz_server)
            try:
                run()
            except Unsatisfiable:  # no invalid input exists for an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    return calls


def test_no_5xx_and_openai_errors(operations, fuzz_server):
    calls = _fuzz(operations, fuzz_server, max_examples=10)
    assert calls >= 5 * len(operations)


@pytest.mark.slow
def test_no_5xx_and_openai_errors_long(operations, fuzz_server):
    _fuzz(operations, fuzz_server, max_examples=200)


def test_still_serving_after_the_fuzzing(fuzz_server):
    response = httpx.post(fuzz_server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=60)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1
