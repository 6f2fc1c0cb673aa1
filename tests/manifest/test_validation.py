"""Each validation rule has a manifest that breaks it and the message it gets; the examples pass them all."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from swiftops.manifest.errors import ManifestError
from swiftops.manifest.validation import load_and_validate

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO_ROOT / "manifests" / "examples").glob("*.yaml"))

HEAD = "apiVersion: swiftops/v1\nkind: {kind}\nmetadata: {{name: demo}}\nspec:\n"


def manifest(body: str, kind: str = "Deployment") -> str:
    return HEAD.format(kind=kind) + body


def problems(write_manifest, text: str) -> list[str]:
    path = write_manifest(text)
    with pytest.raises(ManifestError) as info:
        load_and_validate(path)
    return [str(issue).removeprefix(f"{path}") for issue in info.value.issues]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(example):
    loaded = load_and_validate(example)
    assert loaded.manifest.metadata.name


def test_examples_cover_the_documented_cases():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "qwen2.5-7b-vllm-tp2.yaml", "qwen2.5-vl-3b-multimodal.yaml", "multi-lora.yaml",
            "lmdeploy.yaml", "sharded-job.yaml"} <= names


def test_gpu_count_must_equal_tensor_x_pipeline_x_data(write_manifest):
    found = problems(write_manifest, manifest(
        "  model: {id: m}\n  backend: {name: vllm}\n  parallelism: {tensor: 2, pipeline: 2}\n"
        "  resources:\n    gpu: {count: 2}\n"))
    assert found == [":9: spec.resources.gpu.count: 2 GPUs per pod, but parallelism needs tensor 2 x pipeline 2 "
                     "x data 1 = 4; set resources.gpu.count: 4 or leave it out (it defaults to that product)"]


def test_job_total_gpus_must_equal_shards_x_gpus_per_shard(write_manifest):
    found = problems(write_manifest, manifest(
        "  model: {id: m}\n  backend: {name: vllm}\n  parallelism: {tensor: 2}\n"
        "  job: {val_dataset: [d.jsonl], shards: 4, total_gpus: 4, parallel_pods: 1}\n", kind="InferenceJob"))
    assert found == [":8: spec.job.total_gpus: total_gpus is 4 but 4 shards x 2 GPUs per shard = 8; fix shards, "
                     "resources.gpu.count or total_gpus"]


def test_pt_job_is_data_parallel_through_torchrun_processes(write_manifest):
    found = problems(write_manifest, manifest(
        "  model: {id: m}\n  parallelism: {data: 2}\n  job: {val_dataset: [d.jsonl]}\n", kind="InferenceJob"))
    assert found == [":6: spec.parallelism.data: backend pt cannot do data_parallel_job: the pt backend runs a "
                     "data-parallel job as torchrun processes, one shard each: set --nproc_per_node "
                     "(spec.job.nproc_per_node) instead of a data parallel size"]
    path = write_manifest(manifest("  model: {id: m}\n  job: {val_dataset: [d.jsonl], nproc_per_node: 2}\n",
                                   kind="InferenceJob"))
    assert load_and_validate(path).manifest.gpu_count == 2  # GPUs derived from the torchrun processes


def _model_dir(tmp_path: Path, heads: int, kv_heads: int, vlm: bool = False) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    text = {"num_attention_heads": heads, "num_key_value_heads": kv_heads}
    config = {"model_type": "qwen2_5_vl", "text_config": text} if vlm else {"model_type": "qwen2", **text}
    (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize("vlm", [False, True], ids=["llm", "vlm-text-config"])
def test_tensor_parallel_size_must_divide_the_attention_heads(write_manifest, tmp_path, vlm):
    model = _model_dir(tmp_path, heads=28, kv_heads=4, vlm=vlm)
    found = problems(write_manifest, manifest(
        f"  model: {{id: {model}}}\n  backend: {{name: vllm}}\n  parallelism: {{tensor: 3}}\n"))
    assert found == [f":7: spec.parallelism.tensor: tensor parallel size 3 does not divide the model's 28 attention "
                     f"heads ({model / 'config.json'}); use one of 1, 2, 4, 7, 14, 28"]


def test_tensor_parallel_size_must_fit_the_key_value_heads(write_manifest, tmp_path):
    model = _model_dir(tmp_path, heads=32, kv_heads=6)
    found = problems(write_manifest, manifest(
        f"  model: {{id: {model}}}\n  backend: {{name: vllm}}\n  parallelism: {{tensor: 4}}\n"))
    assert len(found) == 1 and "tensor parallel size 4 does not fit the model's 6 key/value heads" in found[0]


def test_tensor_parallel_check_reads_the_hugging_face_cache(write_manifest, tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--org--llm"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "config.json").write_text(json.dumps({"num_attention_heads": 14}))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    found = problems(write_manifest, manifest("  model: {id: org/llm}\n  backend: {name: vllm}\n"
                                              "  parallelism: {tensor: 4}\n"))
    assert len(found) == 1 and "does not divide the model's 14 attention heads" in found[0]


@pytest.mark.parametrize("body, expected", [
    ("  model: {id: m, quantization: {method: bnb, bits: 4}}\n  adapters: {sql: org/sql-lora}\n"
     "  backend: {name: vllm}\n",
     ":5: spec.model.quantization.method: backend vllm cannot do qlora: QLoRA (LoRA on a bitsandbytes 4-bit base) "
     "runs only on the pt backend"),
    ("  model: {id: m}\n  adapters: {sql: org/sql-lora}\n  backend: {name: lmdeploy}\n",
     ":6: spec.adapters: backend lmdeploy cannot do lora: LMDeploy's TurboMind engine cannot serve LoRA adapters; "
     "set backend.options.lmdeploy_backend: pytorch, merge the adapter, or use pt/vllm"),
    ("  model: {id: m}\n  parallelism: {tensor: 2}\n",
     ":6: spec.parallelism.tensor: backend pt cannot do tensor_parallel: the pt backend runs one process per model; "
     "split a large model over GPUs with parallelism.device_map, or use vllm/lmdeploy for tensor parallelism"),
    ("  model: {id: m}\n  backend: {name: lmdeploy}\n  parallelism: {pipeline: 2}\n",
     ":7: spec.parallelism.pipeline: backend lmdeploy cannot do pipeline_parallel: LMDeploy has no pipeline "
     "parallelism; use tensor parallelism or vllm"),
    ("  model: {id: m}\n  backend: {name: vllm}\n  parallelism: {device_map: auto}\n",
     ":7: spec.parallelism.device_map: backend vllm cannot do device_map: vLLM places the model itself; use "
     "parallelism.tensor/pipeline instead of device_map"),
    ("  model: {id: m}\n  backend: {name: vllm}\n  resources: {gpu: {count: 0}}\n",
     ":7: spec.resources.gpu.count: backend vllm cannot do cpu: the vllm backend needs a GPU; set "
     "resources.gpu.count >= 1 or use pt on CPU"),
    ("  model: {id: m}\n  parallelism: {data: 2}\n",
     ":6: spec.parallelism.data: backend pt cannot do data_parallel_server: the pt server runs one engine per "
     "process; scale a Deployment with replicas instead"),
    ("  model: {id: m}\n  backend: {name: vllm, options: {lmdeploy_backend: pytorch}}\n",
     ":6: spec.backend.options.lmdeploy_backend: lmdeploy_backend applies to backend lmdeploy, not vllm; remove it"),
], ids=["qlora-on-vllm", "lora-on-turbomind", "tp-on-pt", "pp-on-lmdeploy", "device-map-on-vllm", "cpu-on-vllm",
        "dp-server-on-pt", "lmdeploy-option-on-vllm"])
def test_features_the_backend_cannot_do_are_refused_with_the_reason(write_manifest, body, expected):
    assert problems(write_manifest, manifest(body)) == [expected]


def test_lora_on_lmdeploy_pytorch_engine_is_allowed(write_manifest):
    path = write_manifest(manifest("  model: {id: m}\n  adapters: {sql: org/sql-lora}\n"
                                   "  backend: {name: lmdeploy, options: {lmdeploy_backend: pytorch}}\n"))
    assert load_and_validate(path).manifest.spec.backend.options.lmdeploy_backend == "pytorch"


def test_replicas_cannot_share_a_read_write_once_cache(write_manifest):
    found = problems(write_manifest, manifest("  model: {id: m}\n  replicas: 3\n  cache: {size: 50Gi}\n"))
    assert found == [":6: spec.replicas: 3 replicas cannot share the ReadWriteOnce model cache (pods on other nodes "
                     "cannot mount it); set spec.cache.access_mode: ReadWriteMany (a storage class that supports "
                     "it) or ReadOnlyMany (a pre-filled cache), or use replicas: 1"]


def test_parallel_shards_cannot_share_a_read_write_once_cache(write_manifest):
    found = problems(write_manifest, manifest(
        "  model: {id: m}\n  job: {val_dataset: [d.jsonl], shards: 4}\n  cache: {existing_claim: c}\n",
        kind="InferenceJob"))
    assert found == [":6: spec.job.shards: 4 shard pods running at once cannot share the ReadWriteOnce model cache; "
                  "set spec.cache.access_mode: ReadWriteMany or ReadOnlyMany, or spec.job.parallel_pods: 1"]


def test_an_existing_claim_takes_no_size(write_manifest):
    found = problems(write_manifest, manifest("  model: {id: m}\n  cache:\n    existing_claim: c\n    size: 5Gi\n"))
    assert found == [":8: spec.cache.size: size and storage_class describe a new claim; remove them when using "
                     "existing_claim"]


def test_an_adapter_trained_for_another_base_is_refused(write_manifest, tmp_path):
    adapter = tmp_path / "sql-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "meta-llama/Llama-3.1-8B",
                                                             "peft_type": "LORA"}))
    found = problems(write_manifest, manifest(f"  model: {{id: Qwen/Qwen2.5-7B-Instruct}}\n"
                                              f"  adapters:\n    sql: {adapter}\n"))
    assert found == [":7: spec.adapters.sql: adapter 'sql' was trained on 'meta-llama/Llama-3.1-8B' but "
                     "spec.model.id is 'Qwen/Qwen2.5-7B-Instruct'; use the adapter's base model or an adapter "
                     "trained for this one"]


def test_an_adapter_of_a_local_copy_of_its_base_is_accepted(write_manifest, tmp_path):
    adapter = tmp_path / "sql-lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct"}))
    path = write_manifest(manifest(f"  model: {{id: /models/Qwen2.5-7B-Instruct}}\n  adapters: {{sql: {adapter}}}\n"))
    assert "sql" in load_and_validate(path).manifest.spec.adapters


def test_an_adapter_named_like_the_served_model_is_refused(write_manifest):
    found = problems(write_manifest, manifest("  model: {id: m}\n  adapters: {qwen: org/x}\n"
                                              "  server: {served_model_name: qwen}\n"))
    assert found == [":6: spec.adapters.qwen: adapter name 'qwen' is also the served model name; rename the adapter "
                     "so requests can tell them apart"]


@pytest.mark.parametrize("env, expected", [
    ("    - {name: HF_TOKEN, value: abc}\n",
     ":7: spec.env.0.value: env HF_TOKEN looks like a credential given in plain text; store it in a Kubernetes "
     "Secret and write `secret: {name: SECRET, key: KEY}` instead of value"),
    ("    - {name: EXTRA, value: hf_abcdefghijklmnopqrstuvwxyz123456}\n",
     ":7: spec.env.0.value: env EXTRA looks like a credential given in plain text; store it in a Kubernetes "
     "Secret and write `secret: {name: SECRET, key: KEY}` instead of value"),
    ("    - {name: EXTRA}\n", ":7: spec.env.0: env EXTRA: give exactly one of value or secret"),
    ("    - {name: SWIFTOPS_API_KEY, secret: {name: s, key: k}}\n",
     ":7: spec.env.0.name: set the API key with spec.server.api_key_secret, not env"),
], ids=["secret-name", "secret-value", "neither", "api-key-through-env"])
def test_secrets_must_be_secret_references(write_manifest, env, expected):
    assert problems(write_manifest, manifest("  model: {id: m}\n  env:\n" + env)) == [expected]


def test_kind_and_sections_must_agree(write_manifest):
    found = problems(write_manifest, manifest("  model: {id: m}\n  job: {val_dataset: [d.jsonl]}\n"))
    assert found == [":6: spec.job: spec.job applies to kind InferenceJob; remove it or change the kind"]
    found = problems(write_manifest, manifest("  model: {id: m}\n  server: {port: 80}\n  replicas: 2\n",
                                              kind="InferenceJob"))
    assert found == [":4: spec: an InferenceJob needs spec.job with val_dataset (the dataset to run)",
                     ":6: spec.server: spec.server applies to kind Deployment; remove it or change the kind",
                     ":7: spec.replicas: an InferenceJob has no replicas; split the dataset with spec.job.shards "
                     "instead"]


def test_several_rule_violations_are_reported_together(write_manifest, run_cli):
    path = write_manifest(manifest("  model: {id: m}\n  backend: {name: vllm}\n  parallelism: {tensor: 2}\n"
                                   "  replicas: 2\n  resources: {gpu: {count: 3}}\n  cache: {size: 1Gi}\n"
                                   "  env:\n    - {name: GITHUB_TOKEN, value: x}\n"))
    result = run_cli("validate", "-f", str(path))
    assert result.code == 2
    assert f"{path}: 3 problems" in result.err
    assert f"{path}:8: spec.replicas: 2 replicas cannot share" in result.err
    assert f"{path}:9: spec.resources.gpu.count: 3 GPUs per pod" in result.err
    assert f"{path}:12: spec.env.0.value: env GITHUB_TOKEN looks like a credential" in result.err


# Kubernetes' own rules (swiftops/manifest/kubernetes_rules.py): what the API server would refuse, caught here.
# tests/k8s/test_validate_matches_the_api_server.py shows the real API server refusing the same manifests.
KUBERNETES_CASES = {
    "label value with a space": ("metadata:\n  name: demo\n  labels: {team: ml platform}\n", "metadata.labels.team",
                                 "not a valid label value"),
    "label key too long": (f"metadata:\n  name: demo\n  labels: {{{'k' * 64}: x}}\n", "metadata.labels",
                           "not a valid key"),
    "chart's own label": ("metadata:\n  name: demo\n  labels: {app.kubernetes.io/instance: x}\n", "metadata.labels",
                          "set by the chart itself"),
    "service name starting with a digit": ("metadata: {name: 7b-chat}\n", "metadata.name", "DNS-1035"),
    "namespace with capitals": ("metadata: {name: demo, namespace: Team-A}\n", "metadata.namespace",
                                "DNS-1123 label"),
    "nodeSelector key with spaces": ("placement: {node_selector: {gpu type: a100}}\n",
                                     "spec.placement.node_selector", "not a valid key"),
    "nodeSelector value with spaces": ("placement: {node_selector: {gpu: a 100}}\n", "spec.placement.node_selector",
                                       "not a valid label value"),
    "toleration Exists with a value": ("placement: {tolerations: [{key: a, operator: Exists, value: b}]}\n",
                                       "spec.placement.tolerations.0.value", "operator Exists"),
    "toleration Equal without a key": ("placement: {tolerations: [{operator: Equal, value: b}]}\n",
                                       "spec.placement.tolerations.0.operator", "must use operator Exists"),
    "toleration seconds without NoExecute": ("placement: {tolerations: [{key: a, operator: Exists, "
                                             "toleration_seconds: 30}]}\n",
                                             "spec.placement.tolerations.0.toleration_seconds", "NoExecute"),
    "runtime class with capitals": ("placement: {runtime_class_name: Nvidia}\n", "spec.placement.runtime_class_name",
                                    "DNS-1123 subdomain"),
    "gpu resource without a domain": ("resources: {gpu: {resource: gpu}}\n", "spec.resources.gpu.resource",
                                      "domain prefix"),
    "storage class with underscores": ("cache: {storage_class: fast_ssd}\n", "spec.cache.storage_class",
                                       "DNS-1123 subdomain"),
    "autoscaling min above max": ("autoscaling: {min_replicas: 5, max_replicas: 2}\n",
                                  "spec.autoscaling.min_replicas", "above max_replicas"),
    "autoscaling over a ReadWriteOnce cache": ("autoscaling: {max_replicas: 3}\n  cache: {size: 10Gi}\n",
                                               "spec.autoscaling.max_replicas", "ReadWriteOnce"),
}


@pytest.mark.parametrize("case", KUBERNETES_CASES)
def test_kubernetes_rules_are_enforced_before_any_cluster(case, write_manifest):
    change, path, message = KUBERNETES_CASES[case]
    if change.startswith("metadata"):
        text = "apiVersion: swiftops/v1\nkind: Deployment\n" + change + "spec:\n  model: {id: m}\n"
    else:
        text = manifest("  model: {id: m}\n  " + change)
    found = problems(write_manifest, text)
    assert any(path in p and message in p for p in found), found


def test_ops_settings_belong_to_a_deployment(write_manifest):
    found = problems(write_manifest, manifest("  model: {id: m}\n  job: {val_dataset: [d.jsonl]}\n"
                                              "  monitoring: {}\n", kind="InferenceJob"))
    assert any("spec.monitoring" in p and "applies to kind Deployment" in p for p in found), found


def test_scale_to_zero_needs_keda(write_manifest):
    found = problems(write_manifest, manifest("  model: {id: m}\n  autoscaling: {min_replicas: 0}\n"))
    assert any("spec.autoscaling.min_replicas" in p and "needs KEDA" in p for p in found), found
