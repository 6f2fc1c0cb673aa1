"""`swiftops app` mistakes: one `error: ...` line, exit code 2. (The page itself: tests/ui.)"""
from __future__ import annotations


def _one_line_error(done, *fragments: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_base_url_must_be_an_http_url(run_swiftops):
    _one_line_error(run_swiftops("app", "--base_url", "ftp://example.com"), "--base_url", "http(s)")


def test_base_url_and_model_are_exclusive(run_swiftops):
    _one_line_error(run_swiftops("app", "--base_url", "http://127.0.0.1:8000", "--model", "m"),
                    "--base_url", "--model")


def test_help_lists_deploys_flags_and_base_url(run_swiftops):
    done = run_swiftops("app", "--help")
    assert done.returncode == 0
    for flag in ("--base_url", "--model", "--adapters", "--api_key", "--port", "--max_new_tokens"):
        assert flag in done.stdout
