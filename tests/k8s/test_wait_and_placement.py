"""`apply --wait` against a real scheduler and admission chain: a release whose pods cannot run exits non-zero with
the cluster's reason; GPU pods tolerate the GPU operator's taint by default; without --wait apply says so."""
from __future__ import annotations

import pytest

GPU_SERVER = """
apiVersion: swiftops/v1
kind: Deployment
metadata: {name: gpu-chat}
spec:
  model: {id: Qwen/Qwen2.5-7B-Instruct}
  backend: {name: vllm}
  server: {port: 8000}
  resources: {cpu: "1", memory: 1Gi}
"""


def apply(swiftops, text: str, namespace, *flags: str):
    manifest = swiftops.write(text)
    return swiftops("apply", "-f", str(manifest), "--target", "kubernetes", *flags,
                    env={"SWIFTOPS_METADATA__NAMESPACE": namespace.name})


def test_gpu_pods_land_on_tainted_gpu_nodes_without_a_toleration_in_the_manifest(make_namespace, swiftops):
    namespace = make_namespace("restricted")
    # The manifest names no toleration; the GPU nodes carry nvidia.com/gpu=present:NoSchedule.
    result = apply(swiftops, GPU_SERVER, namespace, "--wait", "--timeout", "60s")
    assert result.returncode == 0, result.stderr
    [pod] = namespace.pods("app.kubernetes.io/instance=gpu-chat")
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]


@pytest.mark.parametrize("change, reason", [
    ("  parallelism: {tensor: 16}\n", "Insufficient nvidia.com/gpu"),  # no node has 16 GPUs
    ("  placement: {gpu_toleration: false}\n", "untolerated taint"),  # the default toleration turned off
    ("  placement: {runtime_class_name: gvisor}\n", 'RuntimeClass "gvisor" not found'),  # admission refuses pods
    ("  cache: {existing_claim: no-such-claim}\n", 'persistentvolumeclaim "no-such-claim" not found'),
    ("  cache: {size: 10Gi, storage_class: no-such-class}\n", "not bound"),  # nothing provisions the claim
    ("  image: registry.invalid/swiftops:never\n  replicas: 0\n", None),  # 0 replicas: available at once
], ids=["gpus", "taint", "runtime-class", "claim", "storage-class", "zero-replicas"])
def test_wait_names_why_the_release_does_not_run(change, reason, make_namespace, swiftops):
    namespace = make_namespace("baseline")
    result = apply(swiftops, GPU_SERVER + change, namespace, "--wait", "--timeout", "5s")
    if reason is None:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    assert "release 'gpu-chat': not ready after 5s. The cluster says:" in result.stderr
    assert reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_apply_without_wait_says_nothing_was_waited_for(make_namespace, swiftops):
    namespace = make_namespace("baseline")
    result = apply(swiftops, GPU_SERVER + "  parallelism: {tensor: 16}\n", namespace)
    assert result.returncode == 0, result.stderr
    assert "nothing was waited for" in result.stderr
