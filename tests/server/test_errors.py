"""Every error in OpenAI's shape with the right status; probes, metrics, request ids, the result file."""
from __future__ import annotations

import base64
import json
import socket
import time

import pytest

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("path, body", [
    (CHAT, {"model": "gpt-4", "messages": HI}),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}),
    ("/v1/embeddings", {"model": "gpt-4", "input": "x"}),
])
def test_unknown_model_is_404(http, path, body, served_name):
    error = _error(http.post(path, json=body), 404)
    assert error["param"] == "model" and served_name in error["message"]
    _error(http.get("/v1/models/gpt-4"), 404)


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": HI, "temperature": "hot"}, "temperature"),
    ({"messages": HI, "n": 0}, "n"),
    ({"messages": HI, "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, None),
    ({"messages": HI, "top_logprobs": 2}, None),
    ({"messages": HI, "no_such_field": 1}, "no_such_field"),
])
def test_validation_errors_are_422(http, body, param):
    error = _error(http.post(CHAT, json=body), 422)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_nan_temperature_is_rejected(http):
    response = http.post(CHAT, content=b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
                         headers={"content-type": "application/json"})
    assert _error(response, 422)["param"] == "temperature"


@pytest.mark.parametrize("content", [b'{"messages": ', b"\xff\xfe not json", b"[1, 2"])
def test_malformed_json_is_400(http, content):
    error = _error(http.post(CHAT, content=content, headers={"content-type": "application/json"}), 400)
    assert error["code"] == "invalid_json"


def test_bad_requests_are_400(http):
    error = _error(http.post("/v1/embeddings", json={"input": "x"}), 400)
    assert "embedding model" in error["message"]
    error = _error(http.post("/v1/completions", json={"prompt": "x", "echo": True, "logprobs": 1}), 400)
    assert error["param"] == "echo"
    error = _error(http.post("/v1/completions", json={"prompt": [10 ** 9]}), 400)
    assert error["param"] == "prompt"


def test_unknown_route_and_wrong_method(http):
    _error(http.get("/v1/nothing-here"), 404)
    _error(http.get(CHAT), 405)


def test_body_over_the_limit_is_413_without_being_read(server, api_key):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {1 << 30}\r\n\r\n".encode())
        answer = b""
        while b"}}" not in answer:  # the status line and the JSON body may come in separate packets
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = answer.decode("latin-1").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_probes_and_metrics(server, http):
    import httpx
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").status_code == 200
    text = httpx.get(server.url + "/metrics").text
    for name in ("swiftops_num_requests_running", "swiftops_num_requests_waiting", "swiftops_request_success_total",
                 "swiftops_prompt_tokens_total", "swiftops_generation_tokens_total",
                 "swiftops_time_to_first_token_seconds_bucket", "swiftops_inter_token_latency_seconds_bucket",
                 "swiftops_e2e_request_latency_seconds_bucket", "swiftops_request_queue_time_seconds_bucket"):
        assert name in text or name.replace("_total", "") in text, name


def test_tokens_and_outcomes_are_counted(http, read_metric):
    prompt_before = read_metric("swiftops_prompt_tokens_total")
    generated_before = read_metric("swiftops_generation_tokens_total")
    labels = 'route="/v1/chat/completions",status="200"'
    ok_before = read_metric("swiftops_request_success_total", labels)
    bad_labels = 'route="/v1/chat/completions",status="404"'
    bad_before = read_metric("swiftops_request_failure_total", bad_labels)
    usage = http.post(CHAT, json={"messages": HI, "max_tokens": 5, "temperature": 0}).json()["usage"]
    http.post(CHAT, json={"model": "nope", "messages": HI})
    assert read_metric("swiftops_prompt_tokens_total") == prompt_before + usage["prompt_tokens"]
    assert read_metric("swiftops_generation_tokens_total") == generated_before + usage["completion_tokens"]
    assert read_metric("swiftops_request_success_total", labels) == ok_before + 1
    assert read_metric("swiftops_request_failure_total", bad_labels) == bad_before + 1


def test_openapi_documents_the_request_bodies(http):
    schema = http.get("/openapi.json").json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/ChatCompletionRequest")
    props = schema["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert {"messages", "max_completion_tokens", "stream_options", "top_logprobs", "tools"} <= set(props)
    assert props["max_tokens"]["description"]
    for path in ("/v1/completions", "/v1/embeddings"):
        assert "requestBody" in schema["paths"][path]["post"]


def test_request_id_is_echoed_or_generated(http):
    given = http.post(CHAT, json={"messages": HI, "max_tokens": 1}, headers={"X-Request-Id": "trace-42"})
    assert given.headers["x-request-id"] == "trace-42"
    generated = http.post(CHAT, json={"model": "nope", "messages": HI})
    assert len(generated.headers["x-request-id"]) >= 16
    hostile = http.get("/v1/models", headers={"X-Request-Id": "a b\tforged-log-line"})
    assert hostile.headers["x-request-id"] != "a b\tforged-log-line"  # never echoed into the log as is


def test_result_file_and_verbose_log_elide_media(server, http, server_results):
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"\0" * 3000).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is it"},
                                             {"type": "image_url", "image_url": {"url": image}}]}]
    http.post(CHAT, json={"messages": messages, "max_tokens": 2}, headers={"X-Request-Id": "media-1"})
    http.post(CHAT, json={"messages": HI, "max_tokens": 3, "temperature": 0}, headers={"X-Request-Id": "rec-1"})
    with http.stream("POST", CHAT, json={"messages": HI, "max_tokens": 3, "temperature": 0, "stream": True},
                     headers={"X-Request-Id": "rec-2"}) as response:
        response.read()
    time.sleep(0.3)
    rows = {row["request_id"]: row for row in map(json.loads, server_results.read_text().splitlines())}
    assert rows["rec-1"]["request"]["messages"] == HI and rows["rec-1"]["response"]["choices"][0]["message"]["content"]
    assert rows["rec-2"]["response"]["choices"][0]["message"]["content"] == \
        rows["rec-1"]["response"]["choices"][0]["message"]["content"]
    log = server.output()
    assert "media-1 request" in log and "chars elided" in log
    assert image[30:90] not in log
