"""`swiftops apply` runs a manifest here through the same entrypoint as the container: the quickstart
serves the tiny model offline, and an InferenceJob runs to completion. Secrets are never printed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = REPO_ROOT / "manifests" / "examples" / "quickstart.yaml"
SECRET_VALUES = ("sk-super-secret-api-key-0123456789", "hf_supersecrettokenvalue0123456789abcd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_apply_dry_run_prints_the_command_it_would_exec(run_cli):
    result = run_cli("apply", "-f", str(QUICKSTART), "--dry-run")
    assert result.code == 0, result.err
    assert result.out.strip().splitlines()[-1] == (
        "swiftops deploy --model ./tiny-model --torch_dtype float32 --max_batch_size 8 --max_new_tokens 64 "
        "--temperature 0.0 --served_model_name tiny")


def test_apply_refuses_to_run_without_the_secrets_the_manifest_names(run_cli, write_manifest, monkeypatch):
    monkeypatch.delenv("SWIFTOPS_API_KEY", raising=False)
    path = write_manifest("apiVersion: swiftops/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n"
                          "  model: {id: m}\n  server: {api_key_secret: {name: api, key: key}}\n")
    result = run_cli("apply", "-f", str(path))
    assert result.code == 2
    assert "takes SWIFTOPS_API_KEY from Kubernetes Secrets; to run it here, export SWIFTOPS_API_KEY first" in result.err


def test_no_target_ever_prints_a_secret_value(run_cli, helm_bin, monkeypatch):
    monkeypatch.setenv("SWIFTOPS_API_KEY", SECRET_VALUES[0])
    monkeypatch.setenv("HF_TOKEN", SECRET_VALUES[1])
    example = REPO_ROOT / "manifests" / "examples" / "qwen2.5-7b-vllm-tp2.yaml"
    outputs = [run_cli("render", "-f", str(example), "--target", target)
               for target in ("entrypoint", "docker", "helm-values", "kubernetes")]
    outputs.append(run_cli("apply", "-f", str(example), "--dry-run"))
    outputs.append(run_cli("apply", "-f", str(example), "--target", "kubernetes", "--dry-run"))
    for result in outputs:
        assert result.code == 0, result.err
        for secret in SECRET_VALUES:
            assert secret not in result.out and secret not in result.err
    docker = outputs[1].out
    assert "-e SWIFTOPS_API_KEY -e HF_TOKEN" in docker  # passed through by name only
    assert "SWIFTOPS_API_KEY: from Secret 'qwen-api-key' key 'api-key' (set here)" in outputs[4].out


def _start(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "swiftops.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.timeout(180)
def test_apply_quickstart_serves_the_tiny_model_offline(tiny_model_dir, tmp_path):
    shutil.copy(QUICKSTART, tmp_path / "quickstart.yaml")
    (tmp_path / "tiny-model").symlink_to(tiny_model_dir)  # what `make demo` builds at ./tiny-model
    port = free_port()
    env = {**os.environ, "SWIFTOPS_SPEC__SERVER__PORT": str(port), "SWIFTOPS_SPEC__SERVER__HOST": "127.0.0.1"}
    process = _start(["apply", "-f", "quickstart.yaml"], tmp_path, env)
    try:
        deadline = time.monotonic() + 150
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            while True:
                assert process.poll() is None, process.stdout.read()
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not become ready"
                time.sleep(0.5)
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
            reply = client.post("/v1/chat/completions", json={
                "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
            assert reply.status_code == 200
            assert reply.json()["usage"]["completion_tokens"] >= 1
        process.send_signal(signal.SIGTERM)  # drains and exits cleanly
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = process.stdout.read()
    assert "swiftops apply: swiftops deploy --model ./tiny-model" in log and f"--port {port}" in log


@pytest.mark.timeout(180)
def test_apply_inference_job_runs_to_completion(tiny_model_dir, tmp_path):
    (tmp_path / "tiny-model").symlink_to(tiny_model_dir)
    rows = [{"messages": [{"role": "user", "content": text}]} for text in ("hello", "what is 2+2?", "bye")]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "job.yaml").write_text(
        "apiVersion: swiftops/v1\nkind: InferenceJob\nmetadata: {name: tiny-job}\nspec:\n"
        "  model: {id: ./tiny-model}\n  generation: {max_new_tokens: 4, temperature: 0}\n"
        "  job: {val_dataset: [data.jsonl], result_path: results/out.jsonl}\n  resources: {gpu: {count: 0}}\n")
    process = _start(["apply", "-f", "job.yaml"], tmp_path, dict(os.environ))
    output, _ = process.communicate(timeout=170)
    assert process.returncode == 0, output
    results = (tmp_path / "results" / "out.jsonl").read_text().splitlines()
    assert len(results) == len(rows)
