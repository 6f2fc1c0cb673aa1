"""Load on loopback: many concurrent streaming clients for a bounded time. Zero failed requests (429 is the only
documented refusal), no growth of the server's memory across rounds, and /metrics agrees with what the clients saw.

Fast (CI): 50 clients, two 5-second rounds after a warm-up round. Slow (`make reliability`): 200 clients, four
15-second rounds; its figures go to $RELIABILITY_SOAK_REPORT (docs/reliability.md quotes the last run).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tests.server_process import ServerProcess

CHAT = "/v1/chat/completions"
OK = 'route="/v1/chat/completions",status="200"'
TOPICS = ["rivers", "colours", "planets", "birds", "numbers", "cities", "trees", "songs"]


@dataclass
class RoundResult:
    statuses: dict[int, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    streamed_text_chunks: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _metrics(server) -> dict[str, float]:
    values = {}
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if not line.startswith("#") and line.strip():
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


async def _client(client: httpx.AsyncClient, seed: int, deadline: float, result: RoundResult) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        body = {"messages": [{"role": "user", "content": f"client {seed}: tell me about {rng.choice(TOPICS)}"}],
                "max_tokens": rng.randint(4, 16), "temperature": rng.choice([0, 0.7]), "stream": True,
                "stream_options": {"include_usage": True}}
        try:
            async with client.stream("POST", CHAT, json=body) as response:
                status = response.status_code
                if status == 200:
                    usage = None
                    async for line in response.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                status = 500
                                result.errors.append(line)
                            elif chunk.get("usage"):
                                usage = chunk["usage"]
                            else:
                                result.streamed_text_chunks += 1
                    if usage is None and status == 200:
                        status, _ = 599, result.errors.append("stream ended without usage")
                    elif usage is not None:
                        result.prompt_tokens += usage["prompt_tokens"]
                        result.completion_tokens += usage["completion_tokens"]
                else:
                    await response.aread()
                    if status != 429:
                        result.errors.append(f"{status}: {response.text[:200]}")
        except httpx.HTTPError as exc:
            status = 598
            result.errors.append(f"{type(exc).__name__}: {exc}")
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status == 429:
            await asyncio.sleep(1)  # as Retry-After asks


def soak_round(server, clients: int, seconds: float, headers: dict[str, str]) -> RoundResult:
    async def run() -> RoundResult:
        result = RoundResult()
        limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits, headers=headers) as client:
            deadline = time.monotonic() + seconds
            await asyncio.gather(*[_client(client, i, deadline, result) for i in range(clients)])
        return result
    return asyncio.run(run())


def soak(server, clients: int, round_seconds: float, rounds: int, api_key: str = "") -> dict:
    """A warm-up round, then `rounds` measured rounds; RSS after each."""
    pid = server.process.pid
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    soak_round(server, clients, min(3.0, round_seconds), headers)
    before = _metrics(server)
    rss = [_rss_kib(pid)]
    results = []
    for _ in range(rounds):
        results.append(soak_round(server, clients, round_seconds, headers))
        rss.append(_rss_kib(pid))
    after = _metrics(server)
    total = RoundResult()
    for r in results:
        for status, count in r.statuses.items():
            total.statuses[status] = total.statuses.get(status, 0) + count
        total.prompt_tokens += r.prompt_tokens
        total.completion_tokens += r.completion_tokens
        total.errors += r.errors
    return {"clients": clients, "seconds": rounds * round_seconds, "rounds": rounds, "statuses": total.statuses,
            "requests": total.requests, "failed": total.requests - total.statuses.get(200, 0)
            - total.statuses.get(429, 0), "errors": total.errors[:5], "prompt_tokens": total.prompt_tokens,
            "completion_tokens": total.completion_tokens, "rss_kib": rss,
            "rss_drift_kib": rss[-1] - rss[1] if rounds > 1 else 0,
            "metrics_delta": {"success": after.get(f"swiftops_request_success_total{{{OK}}}", 0)
                              - before.get(f"swiftops_request_success_total{{{OK}}}", 0),
                              "prompt_tokens": after["swiftops_prompt_tokens_total"]
                              - before["swiftops_prompt_tokens_total"],
                              "generation_tokens": after["swiftops_generation_tokens_total"]
                              - before["swiftops_generation_tokens_total"]},
            "running_after": after["swiftops_num_requests_running"] + after["swiftops_engine_sequences_running"]}


def _server_errors(server) -> list[str]:
    return [line for line in server.output().splitlines()
            if "Traceback" in line or "ERROR" in line or "Error" in line][:20]


def _assert_healthy(report: dict, max_drift_kib: int, server) -> None:
    assert report["failed"] == 0, (report, _server_errors(server))
    assert report["statuses"].get(200, 0) >= report["clients"], report
    delta = report["metrics_delta"]
    assert delta["success"] == report["statuses"][200], report
    assert delta["prompt_tokens"] == report["prompt_tokens"], report
    assert delta["generation_tokens"] == report["completion_tokens"], report
    assert report["running_after"] == 0, report
    assert report["rss_drift_kib"] < max_drift_kib, report


@pytest.fixture(scope="module")
def load_server(tiny_model_dir):
    """The soak's own server, as production runs it (no --verbose, no fault hook)."""
    with ServerProcess(["--model", str(tiny_model_dir), "--max_concurrency", "64", "--max_queue", "256",
                        "--max_batch_size", "64"]) as server:
        yield server


def test_50_streaming_clients_for_10_seconds(rel_server, rel_api_key):
    """On the suite's shared server (its other tests run before or after, never during)."""
    report = soak(rel_server, clients=50, round_seconds=5, rounds=2, api_key=rel_api_key)
    print(json.dumps(report))
    _assert_healthy(report, max_drift_kib=48 * 1024, server=rel_server)


@pytest.mark.slow
def test_soak_200_streaming_clients_for_60_seconds(load_server):
    report = soak(load_server, clients=200, round_seconds=15, rounds=4)
    print(json.dumps(report))
    if os.environ.get("RELIABILITY_SOAK_REPORT"):
        with open(os.environ["RELIABILITY_SOAK_REPORT"], "w") as f:
            json.dump(report, f, indent=1)
    # 200 clients beyond --max_concurrency 64: the rest queue (max_queue 256), so no 429 is expected either.
    assert report["statuses"].get(429, 0) == 0, report
    _assert_healthy(report, max_drift_kib=32 * 1024, server=load_server)
