"""The documented flows against a real control plane: upgrade with a changed manifest (a sharded Job included),
autoscaling on and off without losing running replicas, the ops settings of a manifest, ServiceMonitor with and
without the Prometheus Operator's CRDs, rollback, and uninstall keeping the cache claim. Each runs in a namespace
enforcing Pod Security `restricted`, which admits a subset of what `baseline` admits (tests/k8s/test_examples.py
runs every example under both)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "manifests" / "examples"

CPU_SERVER = """
apiVersion: swiftops/v1
kind: Deployment
metadata: {name: chat}
spec:
  model: {id: Qwen/Qwen2.5-0.5B-Instruct}
  server: {port: 8000}
  replicas: 2
  resources: {gpu: {count: 0}, cpu: "1", memory: 1Gi}
"""


def apply(swiftops, manifest: Path, namespace, *extra: str, env: dict | None = None):
    return swiftops("apply", "-f", str(manifest), "--target", "kubernetes", "--wait", "--timeout", "60s", *extra,
                    env={"SWIFTOPS_METADATA__NAMESPACE": namespace.name, **(env or {})})


def ok(result) -> str:
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_sharded_job_reapplies_after_a_change_and_keeps_its_claim(make_namespace, swiftops, cluster):
    namespace = make_namespace("restricted")
    example = EXAMPLES / "sharded-job.yaml"
    ok(apply(swiftops, example, namespace))
    [first] = namespace.jobs()
    # A Job's pod template is immutable: before, this upgrade failed with "field is immutable".
    ok(apply(swiftops, example, namespace, env={"SWIFTOPS_SPEC__GENERATION__MAX_NEW_TOKENS": "256"}))
    current = [job for job in namespace.jobs() if not job["metadata"].get("deletionTimestamp")]
    assert [job["metadata"]["name"] for job in current] != [first["metadata"]["name"]]
    assert len(current) == 1 and current[0]["spec"]["completions"] == 4
    assert len([p for p in namespace.pods("app.kubernetes.io/instance=eval-qwen")
                if p["status"].get("phase") == "Running"]) >= 4
    assert cluster.api.exists(namespace.path("persistentvolumeclaims", "shared-cache"))


def test_autoscaling_never_shrinks_a_running_release(make_namespace, swiftops, cluster):
    namespace = make_namespace("restricted")
    manifest = swiftops.write(CPU_SERVER)
    ok(apply(swiftops, manifest, namespace))
    assert namespace.deployment("chat")["spec"]["replicas"] == 2
    scaled = CPU_SERVER + "  autoscaling: {min_replicas: 1, max_replicas: 4, metric: queue, target: 8}\n" \
                          "  disruption_budget: {max_unavailable: 1}\n  placement: {spread: [node, zone]}\n"
    manifest = swiftops.write(scaled)
    ok(apply(swiftops, manifest, namespace))
    # Before, the chart dropped spec.replicas when autoscaling was on and the Deployment fell to 1 at once.
    assert namespace.deployment("chat")["spec"]["replicas"] == 2
    hpa = cluster.api.get(namespace.path("horizontalpodautoscalers", "chat", "autoscaling/v2"))
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "swiftops_num_requests_waiting"
    pdb = cluster.api.get(namespace.path("poddisruptionbudgets", "chat", "policy/v1"))
    assert pdb["spec"]["maxUnavailable"] == 1
    spread = namespace.deployment("chat")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    # The autoscaler scales to 3; re-applying a changed manifest keeps the 3 running pods.
    cluster.api.patch(namespace.path("deployments", "chat", "apps/v1") + "/scale", {"spec": {"replicas": 3}})
    ok(apply(swiftops, manifest, namespace, env={"SWIFTOPS_SPEC__GENERATION__MAX_NEW_TOKENS": "99"}))
    assert namespace.deployment("chat")["spec"]["replicas"] == 3
    # Autoscaling off: the manifest's replicas again, no autoscaler and no budget left behind.
    ok(apply(swiftops, swiftops.write(CPU_SERVER), namespace))
    assert namespace.deployment("chat")["spec"]["replicas"] == 2
    assert not cluster.api.exists(namespace.path("horizontalpodautoscalers", "chat", "autoscaling/v2"))
    assert not cluster.api.exists(namespace.path("poddisruptionbudgets", "chat", "policy/v1"))


def test_service_monitor_is_left_out_without_its_crds_and_created_with_them(make_namespace, swiftops, cluster,
                                                                           request):
    namespace = make_namespace("restricted")
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servicemonitors.monitoring.coreos.com"
    assert not cluster.api.exists(crd), "this test needs a cluster without the Prometheus Operator CRDs first"
    manifest = swiftops.write(CPU_SERVER + "  monitoring: {interval: 15s, labels: {release: prometheus}}\n")
    # Before, the whole release failed: no matches for kind "ServiceMonitor" in version "monitoring.coreos.com/v1".
    output = ok(apply(swiftops, manifest, namespace))
    assert "no ServiceMonitor was created" in output
    request.getfixturevalue("prometheus_operator_crds")
    ok(apply(swiftops, manifest, namespace))
    monitor = cluster.api.get(namespace.path("servicemonitors", "chat", "monitoring.coreos.com/v1"))
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_rollback_on_failure_restores_the_last_good_release(make_namespace, swiftops, cluster, kube_tools):
    namespace = make_namespace("restricted")
    good = swiftops.write(CPU_SERVER)
    ok(apply(swiftops, good, namespace))
    bad = swiftops.write(CPU_SERVER.replace("resources: {gpu: {count: 0}, ", "backend: {name: vllm}\n"
                                            "  parallelism: {tensor: 16}\n  resources: {"), "bad.yaml")
    result = swiftops("apply", "-f", str(bad), "--target", "kubernetes", "--rollback-on-failure", "--timeout", "8s",
                      env={"SWIFTOPS_METADATA__NAMESPACE": namespace.name})
    assert result.returncode != 0
    assert "Insufficient nvidia.com/gpu" in result.stderr
    assert "rolled the release back to revision 1" in result.stderr
    limits = namespace.deployment("chat")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    history = subprocess.run([kube_tools["helm"], "history", "chat", "-n", namespace.name, "-o", "yaml"],
                             capture_output=True, text=True, check=True)
    assert [entry["status"] for entry in yaml.safe_load(history.stdout)][-1] == "deployed"


def test_uninstall_keeps_the_cache_claim(make_namespace, swiftops, cluster, kube_tools):
    namespace = make_namespace("restricted")
    cluster.add_claim_volume(namespace.name, "chat-cache", "10Gi", "ReadWriteOnce")
    manifest = swiftops.write(CPU_SERVER.replace("replicas: 2", "replicas: 1") + "  cache: {size: 10Gi}\n")
    ok(apply(swiftops, manifest, namespace))
    subprocess.run([kube_tools["helm"], "uninstall", "chat", "-n", namespace.name], check=True, capture_output=True)
    assert not cluster.api.exists(namespace.path("deployments", "chat", "apps/v1"))
    claim = cluster.api.get(namespace.path("persistentvolumeclaims", "chat-cache"))
    assert claim["status"]["phase"] == "Bound"  # the downloaded weights survive the release


def test_queue_autoscaling_with_keda_and_an_inference_pool_route(make_namespace, swiftops, cluster):
    """Where KEDA and the Gateway API inference extension are installed (their CRDs, as in ../shared/envtest/crds):
    a ScaledObject scaling to zero on the queue replaces the HPA, and an InferencePool + HTTPRoute route to the
    server pods; the API server validates both against the real CRD schemas."""
    namespace = make_namespace("restricted")
    manifest = swiftops.write(CPU_SERVER.replace("replicas: 2", "replicas: 1") + """\
  autoscaling: {min_replicas: 0, max_replicas: 3, metric: queue, target: 4,
                prometheus_url: "http://prometheus.monitoring.svc:9090"}
  routing: {gateway: inference-gateway, endpoint_picker: chat-epp}
""")
    ok(apply(swiftops, manifest, namespace))
    scaled = cluster.api.get(namespace.path("scaledobjects", "chat", "keda.sh/v1alpha1"))
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 3)
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and "swiftops_num_requests_waiting" in trigger["metadata"]["query"]
    assert f'namespace="{namespace.name}"' in trigger["metadata"]["query"]
    assert not cluster.api.exists(namespace.path("horizontalpodautoscalers", "chat", "autoscaling/v2"))
    pool = cluster.api.get(namespace.path("inferencepools", "chat", "inference.networking.k8s.io/v1"))
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "chat"
    route = cluster.api.get(namespace.path("httproutes", "chat", "gateway.networking.k8s.io/v1"))
    assert route["spec"]["rules"][0]["backendRefs"][0]["kind"] == "InferencePool"
    # Scale to zero without KEDA's API is refused by the chart before anything is installed.
    bare = swiftops("render", "-f", str(manifest), "--target", "kubernetes", "--api-versions",
                    "inference.networking.k8s.io/v1/InferencePool")
    assert bare.returncode == 2 and "scale to zero) needs KEDA" in bare.stderr


def test_apply_takes_over_a_release_installed_with_client_side_apply(make_namespace, swiftops, kube_tools):
    """A release first installed by plain helm with client-side apply (as helm v3 does) upgrades through swiftops."""
    namespace = make_namespace("restricted")
    values = swiftops.cwd / "values.yaml"
    rendered = swiftops("render", "-f", str(EXAMPLES / "quickstart.yaml"), "--target", "helm-values")
    values.write_text(rendered.stdout)
    subprocess.run([kube_tools["helm"], "install", "quickstart", str(swiftops.repo_root / "helm" / "swiftops"),
                    "--namespace", namespace.name, "--values", str(values), "--server-side=false"],
                   check=True, capture_output=True)
    ok(apply(swiftops, EXAMPLES / "quickstart.yaml", namespace, env={"SWIFTOPS_SPEC__REPLICAS": "2"}))
    assert namespace.deployment("quickstart")["spec"]["replicas"] == 2


def test_rollback_on_failure_when_the_api_server_refuses_the_upgrade(make_namespace, swiftops, cluster, kube_tools):
    """A change only the cluster can judge (a claim's storage class is immutable): helm's upgrade fails, and the
    release goes back to its last good revision instead of staying `failed`."""
    namespace = make_namespace("restricted")
    cluster.add_claim_volume(namespace.name, "chat-cache", "10Gi", "ReadWriteOnce", "shared-nfs")
    good = CPU_SERVER.replace("replicas: 2", "replicas: 1") + "  cache: {size: 10Gi, storage_class: shared-nfs}\n"
    ok(apply(swiftops, swiftops.write(good), namespace))
    bad = swiftops.write(good.replace("storage_class: shared-nfs", "storage_class: fast-ssd"), "bad.yaml")
    result = swiftops("apply", "-f", str(bad), "--target", "kubernetes", "--rollback-on-failure",
                      env={"SWIFTOPS_METADATA__NAMESPACE": namespace.name})
    assert result.returncode != 0
    assert "immutable" in result.stderr and "rolled the release back to revision 1" in result.stderr, result.stderr
    history = subprocess.run([kube_tools["helm"], "history", "chat", "-n", namespace.name, "-o", "yaml"],
                             capture_output=True, text=True, check=True)
    assert yaml.safe_load(history.stdout)[-1]["status"] == "deployed"
