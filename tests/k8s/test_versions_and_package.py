"""The oldest Kubernetes the chart is run against (an API server emulating 1.33; 1.29-1.32 are checked with the
kubernetes-validate schemas in tests/manifest/test_helm.py), and the chart shipped inside the wheel: a
wheel-installed swiftops outside the checkout renders and applies it."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_example_is_admitted_by_kubernetes_1_33(example, emulated_cluster, tmp_path):
    namespace = f"v133-{example.stem.replace('.', '-')}"[:60]
    emulated_cluster.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": namespace, "labels": {
                                                           "pod-security.kubernetes.io/enforce": "restricted"}}})
    result = subprocess.run([sys.executable, "-m", "swiftops.cli.main", "apply", "-f", str(example), "--target",
                             "kubernetes"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "KUBECONFIG": str(emulated_cluster.kubeconfig),
                                 "SWIFTOPS_METADATA__NAMESPACE": namespace})
    assert result.returncode == 0, result.stderr
    kind = yaml.safe_load(example.read_text())["kind"]
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments" if kind == "Deployment" else \
        f"/apis/batch/v1/namespaces/{namespace}/jobs"
    assert len(emulated_cluster.api.get(path)["items"]) == 1


@pytest.fixture(scope="session")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """swiftops' wheel, built offline from this checkout and unpacked: what `pip install swiftops` puts in
    site-packages (the dependencies come from the test venv)."""
    dist = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(dist), str(REPO_ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = dist.glob("swiftops-*.whl")
    site = dist / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "swiftops/chart/Chart.yaml" in names and "swiftops/chart/templates/NOTES.txt" in names
        archive.extractall(site)
    return site


def test_a_wheel_installed_swiftops_applies_the_chart_outside_the_checkout(wheel_site, make_namespace, tmp_path):
    namespace = make_namespace("restricted")
    (tmp_path / "chat.yaml").write_text((REPO_ROOT / "manifests" / "examples" / "quickstart.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(wheel_site), "SWIFTOPS_METADATA__NAMESPACE": namespace.name}
    env.pop("SWIFTOPS_CHART", None)
    where = subprocess.run([sys.executable, "-c", "import swiftops; print(swiftops.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(wheel_site))  # the wheel's copy, not the checkout's
    run = lambda *args: subprocess.run([sys.executable, "-m", "swiftops.cli.main", *args], env=env, cwd=tmp_path,
                                       capture_output=True, text=True, timeout=120)
    rendered = run("render", "-f", "chat.yaml", "--target", "kubernetes")
    assert rendered.returncode == 0, rendered.stderr
    assert "kind: Deployment" in rendered.stdout
    applied = run("apply", "-f", "chat.yaml", "--target", "kubernetes", "--wait", "--timeout", "60s")
    assert applied.returncode == 0, applied.stderr
    assert namespace.deployment("quickstart")["status"]["availableReplicas"] == 1
    written = run("chart", "--output", str(tmp_path / "out"), "--package")
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "out" / "swiftops" / "templates" / "NOTES.txt").is_file()
    assert (tmp_path / "out" / "swiftops-0.1.0.tgz").is_file()  # for a chart repository or `helm install x.tgz`
