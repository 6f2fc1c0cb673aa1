"""Checks on a type-correct manifest that catch, before anything starts, what would otherwise fail
deep inside NCCL, the scheduler or the engine. Every rule returns issues (path, line, message
saying what to do); `validate` reports all of them at once."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from swiftops.manifest import kubernetes_rules as k8s
from swiftops.manifest.errors import ManifestError, ManifestIssue
from swiftops.manifest.yaml_reader import LoadedManifest, load_manifest
from swiftops.protocol.capabilities import unsupported_reason

Rule = Callable[[LoadedManifest], Iterator[ManifestIssue]]

# Env var names that hold credentials: a plain `value` for them is refused.
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|CREDENTIAL|PRIVATE_KEY)", re.I)
# Values that look like credentials whatever the variable is called (HF, OpenAI, AWS, GitHub tokens).
SECRET_VALUE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,})$")


def check_kind(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    m = loaded.manifest
    spec = m.spec
    if m.kind == "Deployment":
        if spec.job is not None:
            yield loaded.issue("spec.job", "spec.job applies to kind InferenceJob; remove it or change the kind")
    else:
        if spec.server is not None:
            yield loaded.issue("spec.server", "spec.server applies to kind Deployment; remove it or change the kind")
        if spec.replicas != 1:
            yield loaded.issue(
                "spec.replicas", "an InferenceJob has no replicas; split the dataset with spec.job.shards instead"
            )
        if spec.job is None:
            yield loaded.issue("spec", "an InferenceJob needs spec.job with val_dataset (the dataset to run)")
        elif not spec.job.val_dataset:
            yield loaded.issue(
                "spec.job.val_dataset", "an InferenceJob needs at least one dataset file in spec.job.val_dataset"
            )


def check_gpu_count(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    spec = loaded.manifest.spec
    p = spec.parallelism
    needed = loaded.manifest.needed_gpus
    declared = spec.resources.gpu.count
    if declared is None or declared == 0:
        return  # derived from the parallelism, or CPU (checked against the capability table)
    if spec.backend.name == "pt" and p.device_map is not None:
        if declared % p.data:
            yield loaded.issue(
                "spec.resources.gpu.count",
                f"{declared} GPUs cannot be split evenly over data parallel size {p.data}; use a multiple of {p.data}",
            )
        return  # device_map spreads one model over the GPUs it is given
    if declared != needed:
        processes = needed // (p.tensor * p.pipeline * p.data)
        product = f"tensor {p.tensor} x pipeline {p.pipeline} x data {p.data}" + (
            f" x job.nproc_per_node {processes}" if processes > 1 else ""
        )
        yield loaded.issue(
            "spec.resources.gpu.count",
            f"{declared} GPUs per pod, but parallelism needs {product} = {needed}; set "
            f"resources.gpu.count: {needed} or leave it out (it defaults to that product)",
        )


def check_job_gpus(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    job = loaded.manifest.spec.job
    if loaded.manifest.kind != "InferenceJob" or job is None or job.total_gpus is None:
        return
    per_shard = loaded.manifest.gpu_count
    if per_shard * job.shards != job.total_gpus:
        yield loaded.issue(
            "spec.job.total_gpus",
            f"total_gpus is {job.total_gpus} but {job.shards} shards x {per_shard} GPUs per shard = "
            f"{per_shard * job.shards}; fix shards, resources.gpu.count or total_gpus",
        )


def _hub_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def find_local_file(model_id: str, name: str, revision: str | None = None) -> Path | None:
    """`name` of a model in a local directory or the Hugging Face cache, without any download."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    if model_id.count("/") != 1:
        return None
    for cache in _hub_cache_dirs():
        repo = cache / f"models--{model_id.replace('/', '--')}"
        ref = repo / "refs" / (revision or "main")
        snapshots = (
            [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else sorted((repo / "snapshots").glob("*"))
        )
        for snapshot in snapshots:
            if (snapshot / name).is_file():
                return snapshot / name
    return None


def read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def attention_heads(config: dict[str, Any]) -> tuple[int | None, int | None]:
    """(attention heads, key/value heads) of a config.json, looking inside a VLM's text config too."""
    for section in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        heads = section.get("num_attention_heads")
        if isinstance(heads, int):
            kv = section.get("num_key_value_heads")
            return heads, kv if isinstance(kv, int) else heads
    return None, None


def check_tensor_divides_heads(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    spec = loaded.manifest.spec
    tp = spec.parallelism.tensor
    if tp == 1:
        return
    config_path = find_local_file(spec.model.id, "config.json", spec.model.revision)
    heads, kv_heads = attention_heads(read_json(config_path) or {})
    if heads is None:
        return  # not readable here: the engine checks again when it loads
    divisors = [d for d in range(1, heads + 1) if heads % d == 0]
    if heads % tp:
        yield loaded.issue(
            "spec.parallelism.tensor",
            f"tensor parallel size {tp} does not divide the model's {heads} attention heads "
            f"({config_path}); use one of {', '.join(map(str, divisors))}",
        )
    elif kv_heads and (kv_heads % tp if kv_heads >= tp else tp % kv_heads):
        yield loaded.issue(
            "spec.parallelism.tensor",
            f"tensor parallel size {tp} does not fit the model's {kv_heads} key/value heads "
            f"({config_path}): it must divide them or be a multiple of them",
        )


def _capability_needs(loaded: LoadedManifest) -> Iterator[tuple[str, str]]:
    """(feature, field path that asks for it) for every feature the manifest uses."""
    spec = loaded.manifest.spec
    if spec.adapters:
        yield "lora", "spec.adapters"
        if len(spec.adapters) > 1:
            yield "multi_lora", "spec.adapters"
    quant = spec.model.quantization
    if quant is not None:
        yield f"quant:{quant.method}", "spec.model.quantization.method"
        if quant.method == "bnb" and spec.adapters:
            yield "qlora", "spec.model.quantization.method"
    p = spec.parallelism
    if p.tensor > 1:
        yield "tensor_parallel", "spec.parallelism.tensor"
    if p.pipeline > 1:
        yield "pipeline_parallel", "spec.parallelism.pipeline"
    if p.data > 1:
        yield (
            "data_parallel_job" if loaded.manifest.kind == "InferenceJob" else "data_parallel_server",
            "spec.parallelism.data",
        )
    if p.device_map is not None:
        yield "device_map", "spec.parallelism.device_map"
    if loaded.manifest.gpu_count == 0:
        yield "cpu", "spec.resources.gpu.count"
    mm = spec.multimodal
    if mm.limit_per_prompt or mm.max_pixels or mm.video_max_pixels:
        yield "multimodal", "spec.multimodal"
    if spec.generation.logprobs:
        yield "logprobs", "spec.generation.logprobs"


def check_capabilities(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    spec = loaded.manifest.spec
    backend = spec.backend.name
    lmdeploy_backend = spec.backend.options.lmdeploy_backend
    if lmdeploy_backend is not None and backend != "lmdeploy":
        yield loaded.issue(
            "spec.backend.options.lmdeploy_backend",
            f"lmdeploy_backend applies to backend lmdeploy, not {backend}; remove it",
        )
    for feature, path in _capability_needs(loaded):
        reason = unsupported_reason(backend, feature, lmdeploy_backend)
        if reason is not None:
            yield loaded.issue(path, f"backend {backend} cannot do {feature}: {reason}")


def check_shared_cache(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    spec = loaded.manifest.spec
    cache = spec.cache
    if cache is None:
        return
    if cache.existing_claim and (cache.size or cache.storage_class):
        yield loaded.issue(
            "spec.cache.size" if cache.size else "spec.cache.storage_class",
            "size and storage_class describe a new claim; remove them when using existing_claim",
        )
    if cache.access_mode != "ReadWriteOnce":
        return
    if loaded.manifest.kind == "Deployment" and spec.replicas > 1:
        yield loaded.issue(
            "spec.replicas",
            f"{spec.replicas} replicas cannot share the ReadWriteOnce model cache (pods on other "
            f"nodes cannot mount it); set spec.cache.access_mode: ReadWriteMany (a storage class "
            f"that supports it) or ReadOnlyMany (a pre-filled cache), or use replicas: 1",
        )
    job = spec.job
    if (
        loaded.manifest.kind == "InferenceJob"
        and job is not None
        and job.shards > 1
        and (job.parallel_pods or job.shards) > 1
    ):
        yield loaded.issue(
            "spec.job.shards",
            f"{job.shards} shard pods running at once cannot share the ReadWriteOnce model cache; "
            f"set spec.cache.access_mode: ReadWriteMany or ReadOnlyMany, or "
            f"spec.job.parallel_pods: 1",
        )


def _same_model(base: str, model_id: str) -> bool:
    if base == model_id:
        return True
    base_path, model_path = Path(base).expanduser(), Path(model_id).expanduser()
    if base_path.exists() and model_path.exists() and base_path.resolve() == model_path.resolve():
        return True
    # A hub id and a local copy of it (Qwen/Qwen2.5-7B-Instruct vs /models/Qwen2.5-7B-Instruct) share the last part.
    return base.rstrip("/").split("/")[-1].lower() == model_id.rstrip("/").split("/")[-1].lower()


def check_adapter_bases(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    spec = loaded.manifest.spec
    served = (spec.server.served_model_name if spec.server else None) or spec.model.id.rstrip("/").split("/")[-1]
    for name, location in spec.adapters.items():
        path = f"spec.adapters.{name}"
        if name == served:
            yield loaded.issue(
                path,
                f"adapter name {name!r} is also the served model name; rename the adapter "
                f"so requests can tell them apart",
            )
        config = read_json(find_local_file(location, "adapter_config.json"))
        base = (config or {}).get("base_model_name_or_path")
        if isinstance(base, str) and base and not _same_model(base, spec.model.id):
            yield loaded.issue(
                path,
                f"adapter {name!r} was trained on {base!r} but spec.model.id is "
                f"{spec.model.id!r}; use the adapter's base model or an adapter trained for "
                f"this one",
            )


def check_secrets(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    for index, var in enumerate(loaded.manifest.spec.env):
        path = f"spec.env.{index}"
        if (var.value is None) == (var.secret is None):
            yield loaded.issue(path, f"env {var.name}: give exactly one of value or secret")
        if var.value is not None and (SECRET_NAME.search(var.name) or SECRET_VALUE.match(var.value.strip())):
            yield loaded.issue(
                f"{path}.value",
                f"env {var.name} looks like a credential given in plain text; store it in a "
                f"Kubernetes Secret and write `secret: {{name: SECRET, key: KEY}}` instead of value",
            )
        if var.name == "SWIFTOPS_API_KEY":
            yield loaded.issue(f"{path}.name", "set the API key with spec.server.api_key_secret, not env")


# Label keys the chart sets itself: a manifest label with one of these names would clash with them.
CHART_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
)


def _labels(loaded: LoadedManifest, path: str, labels: dict[str, str], what: str) -> Iterator[ManifestIssue]:
    for key, value in labels.items():
        if reason := k8s.qualified_name(key):
            yield loaded.issue(f"{path}.{key}", f"{what} key {reason}")
        if reason := k8s.label_value(value):
            yield loaded.issue(f"{path}.{key}", f"{what} {key!r}: {reason}; Kubernetes refuses it")


def check_kubernetes_names(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    """What the API server would refuse in the objects the chart makes of this manifest."""
    m = loaded.manifest
    meta, spec = m.metadata, m.spec
    if m.kind == "Deployment" and (reason := k8s.dns1035_label(meta.name)):
        yield loaded.issue(
            "metadata.name",
            f"{reason}; a Deployment's name is also its Service's name, which "
            f"Kubernetes requires to be a DNS-1035 label (e.g. prefix it with a letter)",
        )
    if meta.namespace is not None and (reason := k8s.dns1123_label(meta.namespace)):
        yield loaded.issue("metadata.namespace", f"namespace {reason}")
    yield from _labels(loaded, "metadata.labels", meta.labels, "label")
    for key in meta.labels:
        if key in CHART_LABELS:
            yield loaded.issue(f"metadata.labels.{key}", f"label {key!r} is set by the chart itself; use another key")
    for key in meta.annotations:
        if reason := k8s.qualified_name(key):
            yield loaded.issue(f"metadata.annotations.{key}", f"annotation key {reason}")
    placement = spec.placement
    yield from _labels(loaded, "spec.placement.node_selector", placement.node_selector, "nodeSelector")
    for index, toleration in enumerate(placement.tolerations):
        path = f"spec.placement.tolerations.{index}"
        if toleration.key and (reason := k8s.qualified_name(toleration.key)):
            yield loaded.issue(f"{path}.key", f"toleration key {reason}")
        if toleration.operator == "Exists" and toleration.value:
            yield loaded.issue(
                f"{path}.value",
                "a toleration with operator Exists matches any value; remove value or use operator Equal",
            )
        if toleration.operator == "Equal" and not toleration.key:
            yield loaded.issue(
                f"{path}.operator",
                "a toleration without a key must use operator Exists (it then tolerates every taint)",
            )
        if toleration.value and (reason := k8s.label_value(toleration.value)):
            yield loaded.issue(f"{path}.value", f"toleration value {reason}")
        if toleration.toleration_seconds is not None and toleration.effect != "NoExecute":
            yield loaded.issue(
                f"{path}.toleration_seconds",
                "toleration_seconds applies to effect NoExecute only; set effect: NoExecute or remove it",
            )
    for field, value in (
        ("runtime_class_name", placement.runtime_class_name),
        ("priority_class_name", placement.priority_class_name),
    ):
        if value is not None and (reason := k8s.dns1123_subdomain(value)):
            yield loaded.issue(f"spec.placement.{field}", f"{field} {reason}")
    if reason := k8s.extended_resource(spec.resources.gpu.resource):
        yield loaded.issue("spec.resources.gpu.resource", reason)
    if spec.cache is not None:
        for field, value in (
            ("existing_claim", spec.cache.existing_claim),
            ("storage_class", spec.cache.storage_class),
        ):
            if value is not None and (reason := k8s.dns1123_subdomain(value)):
                yield loaded.issue(f"spec.cache.{field}", f"{field} {reason}")
    refs = [(f"spec.env.{i}.secret", var.secret) for i, var in enumerate(spec.env) if var.secret]
    if spec.server is not None and spec.server.api_key_secret is not None:
        refs.append(("spec.server.api_key_secret", spec.server.api_key_secret))
    for path, ref in refs:
        if reason := k8s.secret_key(ref.key):
            yield loaded.issue(f"{path}.key", reason)
    if spec.monitoring is not None:
        yield from _labels(loaded, "spec.monitoring.labels", spec.monitoring.labels, "label")
    routing = spec.routing
    if routing is not None:
        for field in ("gateway", "gateway_namespace", "endpoint_picker"):
            value = getattr(routing, field)
            if value is not None and (reason := k8s.dns1123_label(value)):
                yield loaded.issue(f"spec.routing.{field}", f"{field} {reason}")


def check_ops(loaded: LoadedManifest) -> Iterator[ManifestIssue]:
    m = loaded.manifest
    spec = m.spec
    for field in ("autoscaling", "monitoring", "disruption_budget", "routing"):
        if m.kind != "Deployment" and getattr(spec, field) is not None:
            yield loaded.issue(f"spec.{field}", f"spec.{field} applies to kind Deployment (a server); remove it")
    scaling = spec.autoscaling
    if m.kind != "Deployment" or scaling is None:
        return
    if scaling.min_replicas > scaling.max_replicas:
        yield loaded.issue(
            "spec.autoscaling.min_replicas",
            f"min_replicas {scaling.min_replicas} is above max_replicas {scaling.max_replicas}",
        )
    if scaling.min_replicas == 0 and not (scaling.metric == "queue" and scaling.prometheus_url):
        yield loaded.issue(
            "spec.autoscaling.min_replicas",
            "scaling to zero needs KEDA: set metric: queue and prometheus_url (the Prometheus that "
            "scrapes the pods), or min_replicas: 1",
        )
    if scaling.metric == "cpu" and scaling.target > 100:
        yield loaded.issue("spec.autoscaling.target", "a CPU target is a percentage: 1 to 100")
    if scaling.max_replicas > 1 and spec.cache is not None and spec.cache.access_mode == "ReadWriteOnce":
        yield loaded.issue(
            "spec.autoscaling.max_replicas",
            "more than one pod cannot share the ReadWriteOnce model cache; set "
            "spec.cache.access_mode: ReadWriteMany or ReadOnlyMany, or max_replicas: 1",
        )


RULES: tuple[Rule, ...] = (
    check_kind,
    check_gpu_count,
    check_job_gpus,
    check_tensor_divides_heads,
    check_capabilities,
    check_shared_cache,
    check_adapter_bases,
    check_secrets,
    check_kubernetes_names,
    check_ops,
)


def find_issues(loaded: LoadedManifest) -> list[ManifestIssue]:
    issues = [issue for rule in RULES for issue in rule(loaded)]
    return sorted(issues, key=lambda issue: (issue.line or 0, issue.path))


def validate(loaded: LoadedManifest) -> LoadedManifest:
    issues = find_issues(loaded)
    if issues:
        raise ManifestError(issues)
    return loaded


def load_and_validate(path: str | Path) -> LoadedManifest:
    """Parse, type-check and check a manifest file; raises ManifestError with every problem found."""
    return validate(load_manifest(path))
