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
