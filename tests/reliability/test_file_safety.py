"""Issue 21 rows 8, 9 and 11, through the real command line: no command damages a user's file, and hostile
or broken input files get one line and exit 2 (not a traceback, not gigabytes), within bounded time and
memory."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWIFTOPS = [sys.executable, "-m", "swiftops.cli.main"]
QUICKSTART = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "quickstart.yaml"


def run(*args: object, cwd: Path, timeout: float = 120, memory_mb: int = 0) -> subprocess.CompletedProcess:
    def limit() -> None:  # a hostile file must fail fast, not take the machine: cap the child's address space
        if memory_mb:
            resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))

    return subprocess.run([*SWIFTOPS, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 4, result.stderr[-2000:]
    return result.stderr


# ---- row 8: result files ---------------------------------------------------------------------------------

def _dataset(path: Path) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.read_bytes()


@pytest.mark.parametrize("spelling", ["same", "dotted", "link"])
def test_row8_result_path_equal_to_the_dataset_is_refused(tiny_model_dir, tmp_path, spelling):
    data = _dataset(tmp_path / "same.jsonl")
    result = {"same": "same.jsonl", "dotted": "./sub/../same.jsonl", "link": "link.jsonl"}[spelling]
    (tmp_path / "sub").mkdir()
    if spelling == "link":
        (tmp_path / "link.jsonl").hardlink_to(tmp_path / "same.jsonl")
    outcome = run("infer", "--model", tiny_model_dir, "--val_dataset", "same.jsonl", "--result_path", result,
                  "--max_new_tokens", 2, cwd=tmp_path)
    assert "is the input file" in one_line_error(outcome)
    assert (tmp_path / "same.jsonl").read_bytes() == data


@pytest.mark.parametrize("content", [b"my notes\nline two\nlast line without newline",
                                     b"only one line, no newline", b"\x89PNG\r\n\x1a\n\x00\x00binary"])
def test_row8_a_file_that_is_not_a_result_file_is_left_untouched(tiny_model_dir, tmp_path, content):
    _dataset(tmp_path / "data.jsonl")
    (tmp_path / "notes.txt").write_bytes(content)
    outcome = run("infer", "--model", tiny_model_dir, "--val_dataset", "data.jsonl", "--result_path", "notes.txt",
                  "--max_new_tokens", 2, cwd=tmp_path)
    assert "left unchanged" in one_line_error(outcome)
    assert (tmp_path / "notes.txt").read_bytes() == content


def test_row8_resume_appends_after_the_last_complete_line(tmp_path):
    from swiftops.dataset.results import ResultWriter

    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id": "a#0"}\n{"id": "a#1", "respo')  # a run killed mid-row
    with ResultWriter(str(path)) as writer:
        assert writer.done_ids == {"a#0"}
        writer.write({"id": "a#1", "response": "x" * 100_000})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a#0", "a#1"]


# ---- row 9: YAML bombs -------------------------------------------------------------------------------------

def _alias_bomb() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    quickstart = QUICKSTART.read_text()
    return "x-bomb:\n" + "\n".join("  " + line for line in lines) + "\n" + quickstart.replace(
        "metadata:\n", "metadata:\n  labels: *a8\n", 1)


def test_row9_yaml_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path):
    (tmp_path / "bomb.yaml").write_text(_alias_bomb())
    assert len(_alias_bomb()) < 2048
    started = time.monotonic()
    outcome = run("validate", "-f", "bomb.yaml", cwd=tmp_path, timeout=60, memory_mb=2048)
    assert "aliases" in one_line_error(outcome)
    assert time.monotonic() - started < 20


def test_row9_a_few_aliases_still_work(tmp_path):
    text = QUICKSTART.read_text()
    assert "metadata:\n" in text
    (tmp_path / "ok.yaml").write_text(text.replace(
        "metadata:\n", "metadata:\n  labels: &common {team: ml}\n  annotations: *common\n", 1))
    outcome = run("validate", "-f", "ok.yaml", cwd=tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert "valid Deployment" in outcome.stdout


# ---- row 11: binary and deeply nested input files -------------------------------------------------------------

def test_row11_binary_manifest(tmp_path):
    (tmp_path / "m.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    assert "not UTF-8 text" in one_line_error(run("validate", "-f", "m.yaml", cwd=tmp_path))


def test_row11_deeply_nested_manifest(tmp_path):
    (tmp_path / "deep.yaml").write_text("apiVersion: " + "[" * 3000 + "]" * 3000 + "\n")
    assert "nested more than" in one_line_error(run("validate", "-f", "deep.yaml", cwd=tmp_path))
    (tmp_path / "deep2.yaml").write_text("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000)))
    assert "nested more than" in one_line_error(run("validate", "-f", "deep2.yaml", cwd=tmp_path))


@pytest.mark.parametrize("name, content, needle", [
    ("bin.jsonl", b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary\n", "not UTF-8 text"),
    ("bin.csv", b"query\n\xff\xfe\x00\n", "not UTF-8 text"),
    ("deep.jsonl", b'{"messages": ' + b"[" * 3000 + b"]" * 3000 + b"}\n", "nested too deeply"),
    ("deep.json", b"[" * 3000 + b"]" * 3000, "nested too deeply"),
])
def test_row11_binary_or_nested_dataset(tiny_model_dir, tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    outcome = run("infer", "--model", tiny_model_dir, "--val_dataset", name, "--result_path", "out.jsonl",
                  cwd=tmp_path)
    assert needle in one_line_error(outcome)
    assert not (tmp_path / "out.jsonl").exists()
