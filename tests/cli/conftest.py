"""Running the real `swiftops` command line in a child process, as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The installed console script when there is one (`make test` installs the package), else the module.
_SCRIPT = Path(sys.executable).with_name("swiftops")
SWIFTOPS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "swiftops.cli.main"]


def swiftops_env() -> dict[str, str]:
    """The test process's environment (offline Hugging Face) without SWIFTOPS_* settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWIFTOPS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def run_swiftops(tmp_path):
    """Run `swiftops ARGS...` in tmp_path and return the CompletedProcess (text output)."""

    def run(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*SWIFTOPS, *map(str, args)], cwd=tmp_path, env=swiftops_env(), input=input,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def swiftops_process():
    """(argv prefix, environment) that start `swiftops` in a child process (for pexpect and Popen)."""
    return list(SWIFTOPS), swiftops_env()


@pytest.fixture
def swiftops_cli(tmp_path, monkeypatch, capsys):
    """`swiftops ARGS...` run in this process (no fresh interpreter: torch is already imported), in tmp_path,
    without SWIFTOPS_* variables; returns (exit status, stdout, stderr)."""
    import os

    from swiftops.cli.main import main

    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("SWIFTOPS_"):
            monkeypatch.delenv(name)

    def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
        import io
        import sys

        if input is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
