"""Every example manifest through `swiftops apply --target kubernetes --wait` against a real control plane, in a
namespace enforcing Pod Security `baseline` and one enforcing `restricted`: the pods are admitted, scheduled on
a node that fits (GPU nodes for GPU pods, despite their nvidia.com/gpu taint) and get ready."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("pod_security", ["baseline", "restricted"])
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_example_installs_schedules_and_gets_ready(example, pod_security, make_namespace, swiftops, cluster):
    namespace = make_namespace(pod_security)
    manifest = yaml.safe_load(example.read_text())
    cache = manifest["spec"].get("cache")
    if cache and not cache.get("existing_claim"):
        cluster.add_claim_volume(namespace.name, f"{manifest['metadata']['name']}-cache", cache.get("size", "100Gi"),
                                 cache.get("access_mode", "ReadWriteOnce"), cache.get("storage_class", ""))
    result = swiftops("apply", "-f", str(example), "--target", "kubernetes", "--wait", "--timeout", "60s",
                      env={"SWIFTOPS_METADATA__NAMESPACE": namespace.name})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\nwarnings: {namespace.warnings()}"
    name = manifest["metadata"]["name"]
    pods = namespace.pods(f"app.kubernetes.io/instance={name}")
    if manifest["kind"] == "Deployment":
        deployment = namespace.deployment(name)
        replicas = manifest["spec"].get("replicas", 1)
        assert deployment["status"].get("availableReplicas") == replicas
        assert len(pods) == replicas
    else:
        shards = manifest["spec"]["job"].get("shards", 1)
        assert len(pods) == shards
    gpus = [int(p["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) for p in pods]
    for pod, gpu in zip(pods, gpus):
        node = pod["spec"]["nodeName"]
        assert node.startswith("gpu-node-") if gpu else node, (pod["metadata"]["name"], node)
    assert not [w for w in namespace.warnings() if w.startswith(("FailedCreate", "FailedScheduling"))]
