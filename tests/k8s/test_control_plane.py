"""The fixture itself: the control plane admits, schedules and reports like a cluster does."""
from __future__ import annotations

import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_gpu_nodes_are_schedulable_and_tainted(cluster):
    nodes = {n["metadata"]["name"]: n for n in cluster.api.get("/api/v1/nodes")["items"]}
    assert set(nodes) == {"gpu-node-0", "gpu-node-1", "gpu-node-2", "gpu-node-3", "cpu-node-0"}
    gpu = nodes["gpu-node-0"]
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert gpu["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    assert "taints" not in nodes["cpu-node-0"]["spec"]


def test_quickstart_installs_and_its_pod_is_scheduled_and_ready(make_namespace, swiftops):
    namespace = make_namespace("baseline")
    result = swiftops("apply", "-f", str(REPO_ROOT / "manifests" / "examples" / "quickstart.yaml"), "--target", "kubernetes",
                      env={"SWIFTOPS_METADATA__NAMESPACE": namespace.name})
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 30
    while True:
        pods = namespace.pods("app.kubernetes.io/instance=quickstart")
        ready = [p for p in pods if p["status"].get("phase") == "Running"]
        if ready:
            break
        assert time.monotonic() < deadline, (pods, namespace.warnings())
        time.sleep(0.5)
    assert ready[0]["spec"]["nodeName"] == "cpu-node-0"  # no GPU asked: the untainted CPU node


def test_without_binaries_the_tier_skips_and_under_ci_it_fails(tmp_path):
    """No kube-apiserver in KUBEBUILDER_ASSETS: a clear skip reason locally, a failure with CI=true."""
    import os
    import subprocess
    import sys

    target = f"{Path(__file__)}::test_gpu_nodes_are_schedulable_and_tainted"
    # No third-party pytest plugins and no conftest above tests/k8s (the root one imports torch): a fast start.
    base = {**os.environ, "KUBEBUILDER_ASSETS": str(tmp_path), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    args = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--confcutdir",
            str(Path(__file__).parent), target]
    local = subprocess.run(args, env={**base, "CI": ""}, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert f"KUBEBUILDER_ASSETS={tmp_path} has no executable kube-apiserver" in local.stdout
    ci = subprocess.run(args, env={**base, "CI": "true"}, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert ci.returncode != 0 and "cannot run under CI=true" in ci.stdout, ci.stdout
