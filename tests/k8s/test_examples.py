"""Every example manifest through `swiftops apply --target kubernetes --wait` against a real control plane, in a
namespace enforcing Pod Security `baseline` and one enforcing `restricted` (all twelve at once, as a busy cluster
would see them): the pods are admitted, scheduled on a node that fits (GPU nodes for GPU pods, despite their
nvidia.com/gpu taint) and get ready."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))
# Transient while the claim binds (the volume binder syncs every 2 s); anything else is a failure.
TRANSIENT = "pod has unbound immediate PersistentVolumeClaims"


def check(example: Path, namespace) -> list[str]:
    """What is wrong with the cluster's state after a successful apply of `example` (empty: nothing)."""
    manifest = yaml.safe_load(example.read_text())
    name = manifest["metadata"]["name"]
    pods = namespace.pods(f"app.kubernetes.io/instance={name}")
    problems = []
    if manifest["kind"] == "Deployment":
        replicas = manifest["spec"].get("replicas", 1)
        if namespace.deployment(name)["status"].get("availableReplicas") != replicas or len(pods) != replicas:
            problems.append(f"{len(pods)} pods, wanted {replicas} available")
    elif len(pods) != manifest["spec"]["job"].get("shards", 1):
        problems.append(f"{len(pods)} job pods, wanted one per shard")
    for pod in pods:
        gpus = int(pod["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
        node = pod["spec"].get("nodeName", "")
        if not node or (gpus and not node.startswith("gpu-node-")):
            problems.append(f"pod {pod['metadata']['name']} ({gpus} GPUs) on node {node!r}")
        if pod["status"].get("phase") != "Running":
            problems.append(f"pod {pod['metadata']['name']} is {pod['status'].get('phase')}")
    problems += [w for w in namespace.warnings() if w.startswith(("FailedCreate", "FailedScheduling"))
                 and TRANSIENT not in w]
    return problems


def test_every_example_installs_schedules_and_gets_ready_in_baseline_and_restricted(make_namespace, swiftops,
                                                                                    cluster):
    runs = []
    for pod_security in ("baseline", "restricted"):
        for example in EXAMPLES:
            namespace = make_namespace(pod_security)
            manifest = yaml.safe_load(example.read_text())
            cache = manifest["spec"].get("cache")
            if cache and not cache.get("existing_claim"):
                cluster.add_claim_volume(namespace.name, f"{manifest['metadata']['name']}-cache",
                                         cache.get("size", "100Gi"), cache.get("access_mode", "ReadWriteOnce"),
                                         cache.get("storage_class", ""))
            process = subprocess.Popen(
                [sys.executable, "-m", "swiftops.cli.main", "apply", "-f", str(example), "--target", "kubernetes",
                 "--wait", "--timeout", "120s"], cwd=swiftops.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, env={**os.environ, "SWIFTOPS_METADATA__NAMESPACE": namespace.name})
            runs.append((f"{example.stem} ({pod_security})", example, namespace, process))
    failures = {}
    for label, example, namespace, process in runs:
        _, stderr = process.communicate(timeout=300)
        if process.returncode != 0:
            failures[label] = stderr[-3000:]
        elif problems := check(example, namespace):
            failures[label] = problems
    assert not failures, failures
