"""`swiftops infer` without --val_dataset: the chat on a pseudo-terminal (pexpect) and on piped stdin."""
from __future__ import annotations

import json

import pexpect
import pytest

SEPARATOR = "-" * 50
TIMEOUT = 90


def spawn_chat(swiftops_process, model_dir, result_path, *extra: str) -> pexpect.spawn:
    prefix, env = swiftops_process
    argv = [*prefix[1:], "infer", "--model", str(model_dir), "--max_new_tokens", "8", "--temperature", "0",
            "--result_path", str(result_path), *extra]
    child = pexpect.spawn(prefix[0], argv, env=env, encoding="utf-8", timeout=TIMEOUT,
                          dimensions=(40, 200))
    child.expect_exact("<<< ")
    return child


def ask(child: pexpect.spawn, text: str, prompt: str = "<<< ") -> str:
    """Send one line and return what came back before the next prompt."""
    child.sendline(text)
    child.expect_exact(prompt)
    return child.before


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_special_commands_on_a_terminal(swiftops_process, tiny_model_dir, tmp_path):
    result = tmp_path / "chat.jsonl"
    child = spawn_chat(swiftops_process, tiny_model_dir, result, "--system", "You are a test.")
    try:
        first = ask(child, "hello there")
        assert SEPARATOR in first
        assert first.split(SEPARATOR)[0].replace("hello there", "").strip()  # some answer text came back

        assert "multi-line" in ask(child, "multi-line", "<<<[M] ")
        child.sendline("line one")
        child.sendline("line two#")
        child.expect_exact("<<<[M] ")
        assert SEPARATOR in child.before
        assert "single-line" in ask(child, "single-line")

        child.sendline("reset-system")
        child.expect_exact("System <<< ")
        ask(child, "Be brief.")
        assert SEPARATOR in ask(child, "after reset")
        assert SEPARATOR in ask(child, "second turn")
        assert "cleared" in ask(child, "clear")
        assert SEPARATOR in ask(child, "fresh start")

        child.sendline("quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before

    rows = read_rows(result)
    assert [r["messages"][-1]["content"] for r in rows] == [
        "hello there", "line one\nline two", "after reset", "second turn", "fresh start"]
    # --system is the default system prompt; history carries over between turns
    assert rows[0]["messages"][0] == {"role": "system", "content": "You are a test."}
    assert [m["content"] for m in rows[1]["messages"][1:]] == ["hello there", rows[0]["response"], "line one\nline two"]
    # reset-system: a new system prompt and no history
    assert rows[2]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "after reset"}]
    assert len(rows[3]["messages"]) == 4
    # clear: history gone, system prompt kept
    assert rows[4]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "fresh start"}]
    assert all(r["response"] and r["id"] and r["labels"] is None for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_eof_exits_cleanly(swiftops_process, tiny_model_dir, tmp_path):
    child = spawn_chat(swiftops_process, tiny_model_dir, tmp_path / "chat.jsonl")
    try:
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")
    assert not (tmp_path / "chat.jsonl").exists()  # nothing answered, no empty result file


@pytest.mark.parametrize("stream", ["true", "false"])
def test_piped_stdin_streams_or_not_and_logs_logprobs(tiny_model_dir, tmp_path, run_swiftops, stream):
    result = tmp_path / "chat.jsonl"
    # the <image> turn asks for a path; the text-only model refuses it with an error, and the chat goes on
    done = run_swiftops("infer", "--model", tiny_model_dir, "--max-new-tokens", "6", "--temperature", "0",
                        "--stream", stream, "--logprobs", "--result-path", result,
                        input="<image>what is this?\ncat.png\nwhat is 2+2?\nexit\n")
    assert done.returncode == 0, done.stderr
    assert "Input an image path or URL <<< " in done.stdout
    assert "\nerror: " in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert done.stdout.count(SEPARATOR) == 1
    (row,) = read_rows(result)
    assert row["response"] and row["response"] in done.stdout
    assert len(row["logprobs"]) == row["usage"]["completion_tokens"] == 6
    assert all(item["logprob"] <= 0 for item in row["logprobs"])
