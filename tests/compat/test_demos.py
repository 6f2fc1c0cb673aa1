"""The reference's linked demos (ms-swift's examples/infer and examples/deploy), ported into examples/ with only
their import lines changed, run against tiny local models: model ids become local paths, hub datasets local
files, the fixed port the test server's, and max_tokens=512 a count that fits the tiny models' 512-token context."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(relative: str, replacements: dict[str, str], cwd: Path) -> str:
    code = (EXAMPLES / relative).read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in code, f"{relative} no longer says {old!r}"
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_demo_py_batch_and_stream(tiny_model_dir, tmp_path):
    rows = [{"instruction": f"写一句话 {i}", "output": "好"} for i in range(8)]
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    out = run_example("infer/demo.py", {"Qwen/Qwen2.5-1.5B-Instruct": str(tiny_model_dir),
                                        "AI-ModelScope/alpaca-gpt4-data-zh#1000": "alpaca.jsonl#5",
                                        "max_tokens=512": "max_tokens=16"}, tmp_path)
    assert "query0: " in out and "response0: " in out
    assert out.count("metric: {") == 2 and "'num_samples': 5" in out
    assert "query: who are you?\nresponse: " in out


@pytest.mark.slow  # starts a server: `pytest -m slow tests/compat`
def test_openai_chat_client_with_run_deploy(tiny_model_dir, tmp_path):
    out = run_example("deploy/client/llm/chat/openai_client.py", {"Qwen/Qwen2.5-1.5B-Instruct": str(tiny_model_dir),
                                                                  "max_tokens=512": "max_tokens=16"}, tmp_path)
    assert f"model: {tiny_model_dir.name}" in out
    assert "query: Where is the capital of Zhejiang?\nresponse: " in out
    assert "What delicious food is there?" in out


@pytest.mark.slow  # starts a server: `pytest -m slow tests/compat`
def test_reward_model_client(tiny_reward_dir, tmp_path):
    from swiftops.server.launcher import ServerProcess

    with ServerProcess(["--model", str(tiny_reward_dir)]) as server:
        out = run_example("deploy/reward_model/client.py", {"port=8000": f"port={server.port}"}, tmp_path)
    response = out.split("response: ", 1)[1].strip()
    assert float(response) == float(response)  # a score, as ms-swift's reward deployments answer
    assert f"models: ['{tiny_reward_dir.name}']" in out
