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


def test_swift_app_flags(run_swiftops, tmp_path):
    from swiftops.cli.app import command
    from swiftops.cli.options import build_settings
    from swiftops.protocol.settings import ServerSettings

    ctx = command.make_context("app", ["--server_name", "127.0.0.1", "--server_port", "7861", "--stream", "true",
                                       "--is_multimodal", "true"])
    (server,) = build_settings(ctx.params, ServerSettings)
    assert (server.host, server.port) == ("127.0.0.1", 7861)
    _one_line_error(run_swiftops("app", "--model", "m", "--share", "true"), "--share is not supported",
                    "tunnel or ingress")
    _one_line_error(run_swiftops("app", "--model", "m", "--stream", "false"), "always streams")
