"""Turn a validated manifest into what runs it: the entrypoint (argv + env of `swiftops deploy|infer`),
a `docker run` line, and the values of the Helm chart. Kubernetes objects come from the chart itself
(swiftops/manifest/chart.py), so there is one definition of the pod.

Secrets are never rendered as values: only as references (Secret name and key) or as the name of
an environment variable to pass through.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from swiftops.manifest.schema import Manifest, SecretRef
from swiftops.manifest.settings_map import ENV_MAPPINGS, SECRET_SETTINGS, Command, FlagMapping, mappings_for
from swiftops.manifest.yaml_reader import model_at, split_path

MANIFEST_MOUNT_PATH = "/etc/swiftops/manifest.yaml"
# What every image and every pod runs: the same code path as `swiftops apply -f FILE` on a laptop.
CONTAINER_ENTRYPOINT = ["swiftops", "apply", "-f", MANIFEST_MOUNT_PATH]
CONTAINER_WORKDIR = "/workspace"
IMAGE_REPOSITORY = "swiftops/swiftops"


@dataclass
class Entrypoint:
    """The process a manifest runs: argv, plain environment and environment taken from Secrets."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, SecretRef] = field(default_factory=dict)

    @property
    def shell(self) -> str:
        return shlex.join(self.argv)


def command_of(manifest: Manifest) -> Command:
    return "deploy" if manifest.kind == "Deployment" else "infer"


def value_at(manifest: Manifest, path: str) -> Any:
    current: Any = manifest
    for part in split_path(path):
        if current is None:
            return None
        current = current.get(part) if isinstance(current, dict) else getattr(current, str(part), None)
    return current


def default_of(mapping: FlagMapping) -> Any:
    """The value that needs no flag: the settings default (or the manifest default of a pending flag)."""
    if mapping.settings is not None:
        return mapping.settings.model_fields[mapping.flag].get_default(call_default_factory=True)
    parts = split_path(mapping.path)
    holder = model_at(parts[:-1])
    info = holder.model_fields[str(parts[-1])] if holder else None
    return info.get_default(call_default_factory=True) if info else None


def format_flag(flag: str, value: Any) -> list[str]:
    """`--flag value` as `swiftops deploy|infer` parses it (swiftops/cli/options.py)."""
    option = f"--{flag}"
    if isinstance(value, bool):
        return [option, "true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [option, *(str(item) for item in value)]
    if isinstance(value, dict):
        if all(isinstance(v, str) for v in value.values()) and flag == "adapters":
            # sorted: the pod's copy of the manifest comes through Helm, whose toYaml sorts keys
            return [option, *(f"{k}={v}" for k, v in sorted(value.items()))]
        return [option, json.dumps(value, separators=(",", ":"), sort_keys=True)]
    if isinstance(value, BaseModel):
        return [option, json.dumps(value.model_dump(mode="json"), separators=(",", ":"))]
    return [option, str(value)]


# Quantization methods of an already-quantized checkpoint: transformers, vLLM and LMDeploy read them from
# the checkpoint's quantization_config, so they are declared (for validation) but never passed as flags.
CHECKPOINT_QUANT_METHODS = ("gptq", "awq", "fp8")


def _renders(manifest: Manifest, mapping: FlagMapping, value: Any) -> bool:
    if value is None or value == default_of(mapping) or (isinstance(value, (list, dict)) and not value):
        return False
    quant = manifest.spec.model.quantization
    return not (
        mapping.path.startswith("spec.model.quantization.") and quant and quant.method in CHECKPOINT_QUANT_METHODS
    )


def render_flags(manifest: Manifest, command: Command) -> list[str]:
    argv: list[str] = []
    for mapping in mappings_for(command):
        value = value_at(manifest, mapping.path)
        if not _renders(manifest, mapping, value):
            continue
        argv += format_flag(mapping.flag, value)
    return argv


def render_entrypoint(manifest: Manifest, *, shard_index: int | None = None) -> Entrypoint:
    """`swiftops deploy ...` for a Deployment, `swiftops infer --val_dataset ...` for an InferenceJob.

    `shard_index`: this process's shard of a sharded job (Kubernetes sets JOB_COMPLETION_INDEX)."""
    command = command_of(manifest)
    argv = ["swiftops", command, *render_flags(manifest, command)]
    if (
        command == "infer"
        and manifest.spec.job is not None
        and manifest.spec.job.shards > 1
        and shard_index is not None
    ):
        argv += ["--shard_index", str(shard_index)]
    env = {name: str(value) for path, name in ENV_MAPPINGS.items() if (value := value_at(manifest, path)) is not None}
    secret_env: dict[str, SecretRef] = {}
    for path, env_name in SECRET_SETTINGS.values():
        ref = value_at(manifest, path)
        if ref is not None:
            secret_env[env_name] = ref
    for var in manifest.spec.env:
        if var.secret is not None:
            secret_env[var.name] = var.secret
        elif var.value is not None:
            env[var.name] = var.value
    return Entrypoint(argv, env, secret_env)


def entrypoint_document(entry: Entrypoint) -> dict[str, Any]:
    """The container's command and env in Kubernetes' shape (env from Secrets as secretKeyRef)."""
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in entry.env.items()]
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        for k, ref in entry.secret_env.items()
    ]
    return {"command": entry.argv, "env": env}


# ---- docker ------------------------------------------------------------------------------------


def default_image(manifest: Manifest, version: str) -> str:
    return manifest.spec.image or f"{IMAGE_REPOSITORY}:{version}-{manifest.spec.backend.name}"


def _is_local(location: str) -> bool:
    return location.startswith(("./", "../", "/", "~")) or Path(location).exists()


def _container_path(location: str) -> str:
    path = Path(location).expanduser()
    return str(path) if path.is_absolute() else str(Path(CONTAINER_WORKDIR) / path)


def local_mounts(manifest: Manifest) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) for local models, adapters, datasets and results."""
    spec = manifest.spec
    inputs = [spec.model.id, *spec.adapters.values()]
    if spec.job is not None:
        inputs += spec.job.val_dataset
    mounts = [(str(Path(p).expanduser().resolve()), _container_path(p), True) for p in inputs if _is_local(p)]
    if spec.job is not None and spec.job.result_path:
        results_dir = str(Path(spec.job.result_path).parent)
        mounts.append((str(Path(results_dir).expanduser().resolve()), _container_path(results_dir), False))
    return mounts


def render_docker(manifest: Manifest, manifest_file: str, version: str) -> list[str]:
    """argv of `docker run` for the image of the manifest's backend; the image's ENTRYPOINT does the rest."""
    spec = manifest.spec
    argv = ["docker", "run", "--rm", "--name", manifest.metadata.name]
    if manifest.gpu_count > 0:
        argv += ["--gpus", str(manifest.gpu_count)]
    if manifest.kind == "Deployment":
        port = manifest.server_or_default.port
        argv += ["-p", f"{port}:{port}"]
    else:
        argv += ["--no-healthcheck"]
    shm = manifest.shm_size
    if shm:
        argv += ["--shm-size", shm.replace("i", "").lower()]  # docker wants 8g, not 8Gi
    if spec.resources.cpu:
        argv += ["--cpus", spec.resources.cpu]
    if spec.resources.memory:
        argv += ["--memory", spec.resources.memory.replace("i", "").lower()]
    argv += ["-v", f"{Path(manifest_file).resolve()}:{MANIFEST_MOUNT_PATH}:ro"]
    cache_path = manifest.cache_path
    argv += [
        "-v",
        f"{Path('~/.cache/huggingface').expanduser()}:{cache_path}/huggingface",
        "-e",
        f"HF_HOME={cache_path}/huggingface",
    ]
    for host, container, read_only in local_mounts(manifest):
        argv += ["-v", f"{host}:{container}" + (":ro" if read_only else "")]
    entry = render_entrypoint(manifest)
    # Secret values never appear: `-e NAME` passes the variable through from the caller's environment.
    for name in entry.secret_env:
        argv += ["-e", name]
    for name, value in spec_plain_env(manifest).items():
        argv += ["-e", f"{name}={value}"]
    argv.append(default_image(manifest, version))
    return argv


def spec_plain_env(manifest: Manifest) -> dict[str, str]:
    return {var.name: var.value for var in manifest.spec.env if var.value is not None}


# ---- helm ----------------------------------------------------------------------------------------


def manifest_document(manifest: Manifest) -> dict[str, Any]:
    """The manifest with every default filled in (no nulls), as the pod's ConfigMap holds it."""
    return manifest.model_dump(mode="json", exclude_none=True)


def render_helm_values(manifest: Manifest, version: str | None = None) -> dict[str, Any]:
    """Values for helm/swiftops: the whole manifest (mounted into the pod as a ConfigMap, so engine flags
    are never duplicated in values), with the GPU count resolved from the parallelism, and the values derived
    from it (`resolved`), so that the chart computes none of them a second time."""
    document = manifest_document(manifest)
    document["spec"]["resources"]["gpu"]["count"] = manifest.gpu_count
    return {"manifest": document, "resolved": resolved_values(manifest, version), **ops_values(manifest)}


def resolved_values(manifest: Manifest, version: str | None = None) -> dict[str, Any]:
    """The chart's `resolved` values: what the pod needs that is derived from the manifest, computed here once
    (the same definitions `docker run` uses). `version`: the image tag's version (default: this swiftops')."""
    from swiftops import __version__

    server = manifest.server_or_default
    return {
        "gpuCount": manifest.gpu_count,
        "shmSize": manifest.shm_size,
        "image": default_image(manifest, version or __version__),
        "port": server.port,
        "cachePath": manifest.cache_path,
        "shutdownTimeoutSeconds": int(server.shutdown_timeout),  # the chart adds its preStop sleep and margin
    }


def ops_values(manifest: Manifest) -> dict[str, Any]:
    """The chart's operations values from the manifest's spec.autoscaling, spec.monitoring and
    spec.disruption_budget (always given, so removing a section from the manifest turns it off)."""
    spec = manifest.spec
    scaling = spec.autoscaling
    autoscaling: dict[str, Any] = {"enabled": scaling is not None}
    if scaling is not None:
        if scaling.metric == "queue":
            metric = {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "swiftops_num_requests_waiting"},
                    "target": {"type": "AverageValue", "averageValue": str(scaling.target)},
                },
            }
        else:
            metric = {
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target}},
            }
        autoscaling.update(minReplicas=scaling.min_replicas, maxReplicas=scaling.max_replicas, metrics=[metric])
        if scaling.metric == "queue" and scaling.prometheus_url:
            autoscaling["keda"] = {"serverAddress": scaling.prometheus_url, "threshold": str(scaling.target)}
    monitor: dict[str, Any] = {"enabled": spec.monitoring is not None and spec.monitoring.service_monitor}
    if spec.monitoring is not None:
        monitor.update(interval=spec.monitoring.interval, labels=spec.monitoring.labels)
    budget: dict[str, Any] = {"enabled": spec.disruption_budget is not None}
    if spec.disruption_budget is not None:
        budget["maxUnavailable"] = spec.disruption_budget.max_unavailable
    return {"autoscaling": autoscaling, "serviceMonitor": monitor, "podDisruptionBudget": budget}
