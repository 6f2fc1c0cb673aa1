"""Shutdown and restart: SIGTERM under load drains every in-flight stream before exiting 0; a dataset job
(`swiftops infer --val_dataset`) SIGKILLed at random points and re-run ends with every input row exactly once
and no truncated row."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.server_process import ServerProcess

CHAT = "/v1/chat/completions"
SLOW = "@@slow@@"


def test_sigterm_under_load_drains_every_in_flight_stream(tiny_model_dir):
    server = ServerProcess(["--model", str(tiny_model_dir), "--max_concurrency", "32", "--shutdown_timeout", "60"],
                           env={"SWIFTOPS_FAULT_INJECT": f"delay:{SLOW}"})  # 50 ms steps: ~2 s per answer
    clients = 24
    body = {"messages": [{"role": "user", "content": f"drain me {SLOW}"}], "max_tokens": 40, "ignore_eos": True,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}

    async def one(client: httpx.AsyncClient, started: asyncio.Queue) -> tuple[int, int, bool]:
        async with client.stream("POST", CHAT, json=body) as response:
            await started.put(None)
            usage, done = None, False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    usage = json.loads(line[6:]).get("usage") or usage
            return response.status_code, (usage or {}).get("completion_tokens", 0), done

    async def scenario() -> tuple[list, int]:
        started: asyncio.Queue = asyncio.Queue()
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=64)) as client:
            tasks = [asyncio.ensure_future(one(client, started)) for _ in range(clients)]
            for _ in range(clients):
                await started.get()  # every stream got its 200: all are in flight
            server.terminate()
            await asyncio.sleep(0.5)
            try:  # a new request after SIGTERM is refused (503 while draining, or no listener any more)
                late = (await client.post(CHAT, json={**body, "stream": False})).status_code
            except httpx.TransportError:
                late = 0
            return list(await asyncio.gather(*tasks)), late

    server.start()
    try:
        results, late = asyncio.run(scenario())
        assert server.wait(timeout=60) == 0
    finally:
        server.stop()
    assert results == [(200, 40, True)] * clients  # every stream finished whole
    assert late in (0, 503)


def _run_argv(model_dir, dataset, result) -> list[str]:
    return [sys.executable, "-m", "swiftops.cli.main", "infer", "--model", str(model_dir), "--val_dataset",
            str(dataset), "--result_path", str(result), "--max_batch_size", "4", "--max_new_tokens", "24",
            "--temperature", "0"]


def _kill_at_random_points(model_dir, tmp_path, rows: int, kills: int, seed: int) -> None:
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"row {i}: say something"}]})
                               + "\n" for i in range(rows)), encoding="utf-8")
    result = tmp_path / "results.jsonl"
    argv = _run_argv(model_dir, dataset.name, result)  # ids are "data.jsonl#N"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTOPS_")}
    rng = random.Random(seed)
    killed_while_writing = 0
    for _ in range(kills):
        before = result.read_bytes().count(b"\n") if result.exists() else 0
        job = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Some kills land during start-up, most after a few more rows were written.
        target = before + rng.randint(0, 6)
        deadline = time.monotonic() + rng.uniform(0.5, 30)
        while job.poll() is None and time.monotonic() < deadline:
            if result.exists() and result.read_bytes().count(b"\n") >= target and target > before:
                time.sleep(rng.uniform(0, 0.05))
                break
            time.sleep(0.005)
        if job.poll() is not None:
            break  # it finished before this kill: the rest is the final run's job
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
        killed_while_writing += result.exists() and result.read_bytes().count(b"\n") > before
    final = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    text = result.read_text(encoding="utf-8")
    assert text.endswith("\n")
    parsed = [json.loads(line) for line in text.splitlines()]  # no truncated row: each line is whole JSON
    ids = [row["id"] for row in parsed]
    assert sorted(ids) == sorted(f"data.jsonl#{i}" for i in range(rows))  # every row exactly once
    assert all(row["response"] for row in parsed)
    assert killed_while_writing >= 1  # at least one kill hit a run that was writing rows


def test_a_dataset_job_killed_at_random_points_then_rerun_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):
    _kill_at_random_points(tiny_model_dir, tmp_path, rows=30, kills=2, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_a_dataset_job_killed_many_times(tiny_model_dir, tmp_path, seed):
    _kill_at_random_points(tiny_model_dir, tmp_path, rows=120, kills=8, seed=seed)
