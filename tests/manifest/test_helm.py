"""The Helm chart, for real: every example manifest goes validate -> render -> `helm lint --strict` ->
`helm template` -> each object validated against the Kubernetes schemas (kubernetes-validate).

helm v4 comes from PyPI (scripts/fetch_helm.py); these tests fail, never skip, when it cannot be had."""
from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from swiftops.manifest.render import CONTAINER_ENTRYPOINT, manifest_document
from swiftops.manifest.validation import load_and_validate

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "swiftops"
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))
# From the oldest Kubernetes the chart declares (Chart.yaml kubeVersion) to 1.32 by schema; 1.33 and later also
# against real API servers (tests/k8s: v1.36, and v1.36 emulating 1.33); and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", kubernetes_validate.latest_version())
ALL_OPTIONAL = {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                "autoscaling": {"enabled": True, "maxReplicas": 3},
                "podDisruptionBudget": {"enabled": True}}


def helm(helm_bin: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([helm_bin, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def render_values(run_cli, manifest: Path, tmp_path: Path) -> Path:
    result = run_cli("render", "-f", str(manifest), "--target", "helm-values")
    assert result.code == 0, result.err
    values = tmp_path / f"values-{manifest.stem}.yaml"
    values.write_text(result.out)
    return values


def validate_objects(documents: list[dict]) -> None:
    for document in documents:
        if document["apiVersion"] == "monitoring.coreos.com/v1":
            # A CRD: no schema in kubernetes-validate; check the fields Prometheus Operator needs.
            assert document["spec"]["endpoints"][0]["port"] == "http"
            assert document["spec"]["selector"]["matchLabels"]
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


def template(helm_bin: str, name: str, *values: Path, api_versions: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", name, str(CHART)]
    for value in values:
        args += ["--values", str(value)]
    for version in api_versions:
        args += ["--api-versions", version]
    return [doc for doc in yaml.safe_load_all(helm(helm_bin, *args).stdout) if doc]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_lints_renders_and_passes_kubernetes_schemas(example, helm_bin, run_cli, tmp_path):
    manifest = load_and_validate(example).manifest
    values = render_values(run_cli, example, tmp_path)
    lint = helm(helm_bin, "lint", "--strict", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in lint.stdout
    documents = template(helm_bin, manifest.metadata.name, values)
    validate_objects(documents)
    kinds = {doc["kind"] for doc in documents}
    workload = "Deployment" if manifest.kind == "Deployment" else "Job"
    assert workload in kinds and "ConfigMap" in kinds
    assert ("Service" in kinds) == (manifest.kind == "Deployment")
    # the pod runs the manifest it was rendered from, through the same entrypoint as the image
    config_map = next(doc for doc in documents if doc["kind"] == "ConfigMap")
    mounted = yaml.safe_load(config_map["data"]["manifest.yaml"])
    expected = manifest_document(manifest)
    expected["spec"]["resources"]["gpu"]["count"] = manifest.gpu_count
    assert mounted == expected
    pod = next(doc for doc in documents if doc["kind"] == workload)["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == CONTAINER_ENTRYPOINT


def test_all_optional_objects_render_valid(helm_bin, run_cli, tmp_path):
    example = REPO_ROOT / "manifests" / "examples" / "qwen2.5-7b-vllm-tp2.yaml"
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump(ALL_OPTIONAL))
    values = render_values(run_cli, example, tmp_path)
    helm(helm_bin, "lint", "--strict", str(CHART), "--values", str(values), "--values", str(extra))
    documents = template(helm_bin, "qwen-chat", values, extra,  # a ServiceMonitor renders where its API exists
                         api_versions=("monitoring.coreos.com/v1/ServiceMonitor",))
    validate_objects(documents)
    assert {doc["kind"] for doc in documents} >= {"ServiceMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                                                  "PersistentVolumeClaim", "Deployment", "Service"}
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2  # nothing running yet: the manifest's, within the HPA's bounds


def test_tensor_parallel_server_gets_gpus_shm_probes_and_a_long_grace_period(helm_bin, run_cli, tmp_path):
    example = REPO_ROOT / "manifests" / "examples" / "qwen2.5-7b-vllm-tp2.yaml"
    documents = template(helm_bin, "qwen-chat", render_values(run_cli, example, tmp_path))
    pod = next(doc for doc in documents if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2  # derived from parallelism.tensor
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] >= 600
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > 30 + sleep  # longer than the drain timeout plus preStop
    env = {e["name"]: e for e in container["env"]}
    assert env["SWIFTOPS_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "qwen-api-key", "key": "api-key"}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert pod["tolerations"] == [{"operator": "Exists", "key": "nvidia.com/gpu", "effect": "NoSchedule"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def test_sharded_job_is_an_indexed_job_with_one_pod_per_shard(helm_bin, run_cli, tmp_path):
    example = REPO_ROOT / "manifests" / "examples" / "sharded-job.yaml"
    documents = template(helm_bin, "eval-qwen", render_values(run_cli, example, tmp_path))
    job = next(doc for doc in documents if doc["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 4 and job["spec"]["parallelism"] == 4
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and "startupProbe" not in pod["containers"][0]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert next(v for v in pod["volumes"] if v["name"] == "cache")["persistentVolumeClaim"] == {"claimName": "shared-cache"}


def test_cpu_quickstart_requests_no_gpu_and_no_shm(helm_bin, run_cli, tmp_path):
    example = REPO_ROOT / "manifests" / "examples" / "quickstart.yaml"
    documents = template(helm_bin, "quickstart", render_values(run_cli, example, tmp_path))
    pod = next(doc for doc in documents if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "2", "memory": "2Gi"}
    assert all(v["name"] != "dshm" for v in pod["volumes"])
    assert pod["containers"][0]["image"] == "swiftops/swiftops:0.1.0-pt"


def test_helm_rejects_a_bad_manifest_through_the_values_schema(helm_bin, tmp_path):
    values = tmp_path / "bad.yaml"
    values.write_text(yaml.safe_dump({"manifest": {"apiVersion": "swiftops/v1", "kind": "Deployment",
                                                   "metadata": {"name": "x"},
                                                   "spec": {"model": {"id": "m"}, "server": {"prot": 1}}}}))
    result = helm(helm_bin, "template", "x", str(CHART), "--values", str(values), check=False)
    assert result.returncode != 0
    assert "additional properties 'prot' not allowed" in result.stderr


def test_autoscaling_refuses_a_read_write_once_cache(helm_bin, run_cli, tmp_path):
    example = REPO_ROOT / "manifests" / "examples" / "multi-lora.yaml"  # a new ReadWriteOnce claim
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"autoscaling": {"enabled": True, "maxReplicas": 2}}))
    result = helm(helm_bin, "template", "x", str(CHART), "--values", str(render_values(run_cli, example, tmp_path)),
                  "--values", str(extra), check=False)
    assert result.returncode != 0 and "cannot mount a ReadWriteOnce cache" in result.stderr


def test_render_kubernetes_target_prints_the_chart_objects(helm_bin, run_cli):
    example = REPO_ROOT / "manifests" / "examples" / "lmdeploy.yaml"
    result = run_cli("render", "-f", str(example), "--target", "kubernetes")
    assert result.code == 0, result.err
    documents = [doc for doc in yaml.safe_load_all(result.out) if doc]
    validate_objects(documents)
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    assert deployment["metadata"]["name"] == "internlm-turbomind"
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "swiftops/swiftops:0.1.0-lmdeploy"


def test_apply_kubernetes_dry_run_prints_the_helm_command_and_values(helm_bin, run_cli):
    example = REPO_ROOT / "manifests" / "examples" / "sharded-job.yaml"
    result = run_cli("apply", "-f", str(example), "--target", "kubernetes", "--dry-run")
    assert result.code == 0, result.err
    first = result.out.splitlines()[0]
    assert first.startswith("# would run: helm upgrade --install --server-side=true --force-conflicts eval-qwen ")
    assert first.endswith("swiftops/chart --values VALUES.yaml")  # the chart shipped in the package
    values = yaml.safe_load(result.out.split("# with VALUES.yaml:\n", 1)[1])
    assert values["manifest"]["spec"]["job"]["shards"] == 4


def test_notes_say_how_to_reach_the_server(helm_bin, run_cli, tmp_path):
    example = REPO_ROOT / "manifests" / "examples" / "qwen2.5-7b-vllm-tp2.yaml"
    values = render_values(run_cli, example, tmp_path)
    result = helm(helm_bin, "install", "--dry-run=client", "qwen-chat", str(CHART), "--values", str(values))
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl --namespace default port-forward service/qwen-chat 8000:8000" in notes
    assert "get secret qwen-api-key" in notes and "/v1/models" in notes
