"""`apply --wait` against a real scheduler and admission chain: a release whose pods cannot run exits non-zero with
the cluster's reason; GPU pods tolerate the GPU operator's taint by default; without --wait apply says so."""
from __future__ import annotations

import os
import subprocess
import sys

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


# (what the manifest changes, the cluster's reason --wait must name); each runs in its own namespace, all at once.
FAILURES = {
    "gpus": ("  parallelism: {tensor: 16}\n", "Insufficient nvidia.com/gpu"),  # no node has 16 GPUs
    "taint": ("  placement: {gpu_toleration: false}\n", "untolerated taint"),  # the default toleration turned off
    "runtime-class": ("  placement: {runtime_class_name: gvisor}\n", 'RuntimeClass "gvisor" not found'),  # admission
    "claim": ("  cache: {existing_claim: no-such-claim}\n", 'persistentvolumeclaim "no-such-claim" not found'),
    "storage-class": ("  cache: {size: 10Gi, storage_class: no-such-class}\n", "not bound"),  # nothing provisions it
    "image": ("  image: registry.invalid/swiftops:never\n", "ErrImagePull"),  # the fake kubelet cannot pull it
    "zero-replicas": ("  image: registry.invalid/swiftops:never\n  replicas: 0\n", None),  # available at once
}


def test_wait_names_why_a_release_does_not_run(make_namespace, swiftops):
    running = {}
    for case, (change, _) in FAILURES.items():
        namespace = make_namespace("baseline")
        manifest = swiftops.write(GPU_SERVER + change, f"{case}.yaml")
        running[case] = subprocess.Popen(
            [sys.executable, "-m", "swiftops.cli.main", "apply", "-f", str(manifest), "--target", "kubernetes",
             "--wait", "--timeout", "8s"], cwd=swiftops.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "SWIFTOPS_METADATA__NAMESPACE": namespace.name})
    for case, process in running.items():
        _, stderr = process.communicate(timeout=120)
        reason = FAILURES[case][1]
        if reason is None:
            assert process.returncode == 0, (case, stderr)
            continue
        assert process.returncode != 0, case
        assert "release 'gpu-chat': not ready after 8s. The cluster says:" in stderr, (case, stderr)
        assert reason in stderr, (case, stderr)
        assert "Traceback" not in stderr, (case, stderr)


def test_apply_without_wait_says_nothing_was_waited_for(make_namespace, swiftops):
    namespace = make_namespace("baseline")
    result = apply(swiftops, GPU_SERVER + "  parallelism: {tensor: 16}\n", namespace)
    assert result.returncode == 0, result.stderr
    assert "nothing was waited for" in result.stderr
