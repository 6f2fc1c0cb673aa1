"""The swiftops manifest: `apiVersion: swiftops/v1`, kind `Deployment` (an OpenAI server) or
`InferenceJob` (batch inference over a dataset), `metadata` and `spec`.

Sections whose fields are engine/CLI settings are derived from the settings models
(swiftops/protocol/settings.py) field by field, so a manifest field, a `swiftops deploy|infer`
flag and a `SWIFTOPS_*` variable never drift apart; swiftops/manifest/settings_map.py says which
manifest path feeds which flag. Everything else (resources, placement, cache, env) is for the
container and the cluster.

Any field can be overridden from the environment: `SWIFTOPS_` + the field path joined with `__`,
e.g. `SWIFTOPS_SPEC__SERVER__PORT=9000` or `SWIFTOPS_SPEC__BACKEND__OPTIONS__MAX_BATCH_SIZE=8`
(JSON for mappings and lists). Precedence: manifest < environment < flags.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from swiftops.manifest.settings_map import EXCLUDED_FROM_SECTIONS
from swiftops.protocol.settings import (
    BackendName,
    DType,
    EngineSettings,
    GenerationSettings,
    InferSettings,
    MediaSettings,
    ModelSettings,
    ServerSettings,
)

API_VERSION = "swiftops/v1"
ENV_PREFIX = "SWIFTOPS_"
ENV_NESTED_DELIMITER = "__"
# A Kubernetes quantity: 16Gi, 500m, 2, 1.5G
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# DNS-1123 label, at most 53 characters (Helm's limit on release names)
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,51}[a-z0-9])?$"
DEFAULT_CACHE_PATH = "/cache"
# /dev/shm of a pod whose processes talk over NCCL, unless spec.resources.shm says otherwise.
DEFAULT_NCCL_SHM = "8Gi"


class Spec(BaseModel):
    """Base of every manifest section: unknown keys are errors (reported with a did-you-mean)."""

    model_config = ConfigDict(extra="forbid")


def section_from_settings(
    name: str,
    settings: type[BaseModel],
    doc: str,
    *,
    exclude: tuple[str, ...] = (),
    extras_first: bool = False,
    **extra: Any,
) -> type[Spec]:
    """A manifest section with the same fields (type, default, constraints, description) as a settings
    model, minus `exclude` and the fields the manifest sets elsewhere (settings_map.EXCLUDED_FROM_SECTIONS,
    e.g. tensor_parallel_size lives in spec.parallelism), plus `extra` fields given as (annotation, Field(...))."""
    fields: dict[str, Any] = {}
    for field_name, info in settings.model_fields.items():
        if field_name not in exclude and field_name not in EXCLUDED_FROM_SECTIONS:
            fields[field_name] = (info.annotation, copy.deepcopy(info))
    # A manifest-only field that a settings model has gained since keeps the settings' definition.
    added = {key: value for key, value in extra.items() if key not in fields}
    fields = {**added, **fields} if extras_first else {**fields, **added}
    return create_model(name, __base__=Spec, __doc__=doc, **fields)


class SecretRef(Spec):
    """A key of a Kubernetes Secret. Manifests never hold secret values, only where to find them."""

    name: str = Field(
        ...,
        pattern=NAME_PATTERN.replace("{0,51}", "{0,251}"),
        description="Name of the Kubernetes Secret (in the release's namespace).",
    )
    key: str = Field(..., min_length=1, description="Key inside the Secret whose value is used.")


class Metadata(Spec):
    name: str = Field(
        ...,
        pattern=NAME_PATTERN,
        description="Name of the deployment or job: a DNS-1123 label of at most 53 characters; "
        "also the Helm release name.",
    )
    namespace: str | None = Field(None, description="Kubernetes namespace (default: the current context's).")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels added to every Kubernetes object.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations added to the pods.")


class Quantization(Spec):
    method: Literal["bnb", "gptq", "awq", "fp8"] = Field(
        ...,
        description="Quantization method: bnb (bitsandbytes, quantized on load; with adapters this is QLoRA), "
        "or gptq/awq/fp8 to declare a checkpoint already quantized that way (the engine reads "
        "it from the checkpoint; declaring it lets validation check the backend supports it).",
    )
    bits: Literal[4, 8] | None = Field(None, description="Bits per weight for bnb (4 or 8).")


ModelSpec: Any = section_from_settings(  # built at run time: its fields are Any to mypy
    "ModelSpec",
    ModelSettings,
    "The model to load; besides id/revision/dtype/quantization, the same names as the model flags.",
    extras_first=True,
    id=(
        str,
        Field(
            ...,
            min_length=1,
            description="Hub id (org/name) or local path of the model (relative paths are "
            "relative to the working directory).",
        ),
    ),
    revision=(str | None, Field(None, description="Hub revision (branch, tag or commit) of the model.")),
    dtype=(
        DType,
        Field(
            "auto", description="Weights dtype: auto (the checkpoint's; float32 on CPU), float32, float16 or bfloat16."
        ),
    ),
    quantization=(
        Quantization | None,
        Field(None, description="Quantize on load (bnb) or declare the checkpoint's quantization method."),
    ),
)


BackendOptions: Any = section_from_settings(  # built at run time: its fields are Any to mypy
    "BackendOptions",
    EngineSettings,
    "Engine options; the same names as `swiftops deploy|infer` flags.",
    lmdeploy_backend=(
        Literal["turbomind", "pytorch"] | None,
        Field(
            None,
            description="LMDeploy engine: turbomind (default when the model supports it) "
            "or pytorch (needed for LoRA adapters).",
        ),
    ),
    enable_prefix_caching=(
        bool | None,
        Field(
            None,
            description="Reuse KV cache across requests sharing a "
            "prompt prefix (default: on for pt and vllm, "
            "off for lmdeploy).",
        ),
    ),
    max_loras=(
        int | None,
        Field(None, ge=1, description="Most adapters resident at once (least recently used ones are unloaded)."),
    ),
    max_lora_rank=(
        int | None,
        Field(None, ge=1, description="Highest LoRA rank the engine reserves room for (vllm)."),
    ),
    engine_kwargs=(
        dict[str, Any],
        Field(
            default_factory=dict,
            description="Extra keyword arguments passed unchanged to the backend library's engine (vllm, lmdeploy).",
        ),
    ),
)


class BackendSpec(Spec):
    name: BackendName = Field("pt", description="Inference backend: pt (swiftops' own), vllm or lmdeploy.")
    options: BackendOptions = Field(
        default_factory=BackendOptions, description="Engine options (batching, memory, caching) for the backend."
    )


class Parallelism(Spec):
    tensor: int = Field(1, ge=1, description="Tensor parallel size: GPUs each layer is split over (vllm, lmdeploy).")
    pipeline: int = Field(1, ge=1, description="Pipeline parallel size: stages the layers are split into (vllm).")
    data: int = Field(
        1,
        ge=1,
        description="Data parallel size: engine replicas in one pod (vllm, lmdeploy), "
        "or torchrun processes of a job (pt).",
    )
    device_map: str | None = Field(
        None,
        description="transformers device_map for the pt backend: auto, balanced, "
        "cpu, cuda:0 or a JSON map; spreads one model over the "
        "pod's GPUs.",
    )
    max_memory: dict[str, str] = Field(
        default_factory=dict, description="Most memory per device with device_map, e.g. {'0': '20GiB', 'cpu': '64GiB'}."
    )


Multimodal: Any = section_from_settings(  # built at run time: its fields are Any to mypy
    "Multimodal",
    MediaSettings,
    "Limits on images, video and audio; the same names as the `swiftops deploy` / `infer` flags "
    "(ms-swift's MAX_PIXELS, VIDEO_MAX_PIXELS, FPS_MAX_FRAMES... environment variables).",
    limit_per_prompt=(
        dict[Literal["image", "video", "audio"], int],
        Field(
            default_factory=dict,
            description="Most media items of each kind in one request, e.g. {image: 5, video: 2} "
            "(flag --limit_mm_per_prompt).",
        ),
    ),
)


ServerSpec: Any = section_from_settings(  # built at run time: its fields are Any to mypy
    "ServerSpec",
    ServerSettings,
    "The OpenAI-compatible server of a Deployment; the same names as `swiftops deploy` flags.",
    api_key_secret=(
        SecretRef | None,
        Field(
            None,
            description="Secret holding the bearer key clients must send "
            "(given to the server as SWIFTOPS_API_KEY). "
            "A key in plain text is refused.",
        ),
    ),
)

JobSpec: Any = section_from_settings(  # built at run time: its fields are Any to mypy
    "JobSpec",
    InferSettings,
    "Batch inference of an InferenceJob; the same names as `swiftops infer` flags.",
    shards=(
        int,
        Field(
            1,
            ge=1,
            description="Split the dataset into this many shards, one pod each (a Kubernetes "
            "Indexed Job; each pod takes shard $JOB_COMPLETION_INDEX).",
        ),
    ),
    parallel_pods=(
        int | None,
        Field(None, ge=1, description="Most shard pods running at once (default: all shards)."),
    ),
    backoff_limit=(
        int,
        Field(2, ge=0, description="Retries of a failed pod before the job fails (per shard for a sharded job)."),
    ),
    total_gpus=(
        int | None,
        Field(
            None,
            ge=0,
            description="GPUs the whole job uses, if you want it checked: must equal GPUs per shard x shards.",
        ),
    ),
)


class Gpu(Spec):
    count: int | None = Field(
        None, ge=0, description="GPUs per pod; default: tensor x pipeline x data. 0 runs on CPU (pt only)."
    )
    resource: str = Field(
        "nvidia.com/gpu", description="Extended resource name of the GPU (nvidia.com/gpu, amd.com/gpu, ...)."
    )


class Resources(Spec):
    gpu: Gpu = Field(default_factory=Gpu, description="GPUs per pod (one replica or one shard).")
    cpu: str | None = Field(None, pattern=QUANTITY_PATTERN, description="CPU request and limit per pod, e.g. 8.")
    memory: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="Memory request and limit per pod, e.g. 64Gi."
    )
    shm: str | None = Field(
        None,
        pattern=QUANTITY_PATTERN,
        description="Size of /dev/shm (a memory emptyDir); default 8Gi when more than one process of the pod "
        "talks over NCCL (tensor, pipeline or data parallel size > 1, or a job's nproc_per_node > 1), "
        "else the runtime's.",
    )


class Toleration(Spec):
    key: str | None = Field(None, description="Taint key the toleration applies to (empty: all keys).")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(None, description="Taint value with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate (empty: all effects)."
    )
    toleration_seconds: int | None = Field(None, description="How long a NoExecute taint is tolerated.")


class Placement(Spec):
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must match, e.g. a GPU product label."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the pods tolerate (GPU nodes are often tainted)."
    )
    affinity: dict[str, Any] = Field(
        default_factory=dict, description="Kubernetes affinity, as in a pod spec (nodeAffinity, podAntiAffinity, ...)."
    )
    runtime_class_name: str | None = Field(None, description="RuntimeClass of the pods (e.g. nvidia).")
    priority_class_name: str | None = Field(None, description="PriorityClass of the pods.")
    gpu_toleration: bool = Field(
        True,
        description="Pods that request GPUs tolerate the GPU operator's taint "
        "(<gpu resource>:NoSchedule, e.g. nvidia.com/gpu) unless "
        "tolerations name that key already; false: no such toleration.",
    )
    spread: list[Literal["node", "zone"]] = Field(
        default_factory=list,
        description="Spread the pods across nodes (kubernetes.io/hostname) and/or zones "
        "(topology.kubernetes.io/zone), as evenly as the cluster allows "
        "(topologySpreadConstraints, ScheduleAnyway).",
    )


class Cache(Spec):
    existing_claim: str | None = Field(
        None, description="Use this existing PersistentVolumeClaim for the model cache instead of creating one."
    )
    size: str | None = Field(None, pattern=QUANTITY_PATTERN, description="Size of a new claim (default 100Gi).")
    storage_class: str | None = Field(None, description="StorageClass of a new claim (default: the cluster's).")
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = Field(
        "ReadWriteOnce",
        description="Access mode of the claim; more than one pod needs ReadWriteMany "
        "(or ReadOnlyMany for a pre-filled cache).",
    )
    mount_path: str = Field(
        DEFAULT_CACHE_PATH, description="Where the cache is mounted; HF_HOME and MODELSCOPE_CACHE point inside it."
    )


class Autoscaling(Spec):
    """Horizontal autoscaling of a Deployment's server pods (a HorizontalPodAutoscaler). Once on, the autoscaler
    owns the replica count: re-applying the manifest keeps the number running."""

    min_replicas: int = Field(
        1,
        ge=0,
        description="Fewest server pods; 0 (scale to zero when idle) needs KEDA (metric queue with prometheus_url).",
    )
    max_replicas: int = Field(4, ge=1, description="Most server pods.")
    metric: Literal["queue", "cpu"] = Field(
        "cpu",
        description="queue: requests waiting per pod (swiftops_num_requests_waiting, a Pods metric: needs a "
        "metrics adapter such as prometheus-adapter); cpu: CPU utilisation.",
    )
    target: int = Field(80, ge=1, description="Target per pod: waiting requests (queue) or CPU percent (cpu).")
    prometheus_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="metric queue: the Prometheus server that scrapes the pods. With it, "
        "where the cluster serves KEDA's keda.sh/v1alpha1 ScaledObject, "
        "KEDA scales on the queue read from Prometheus (no metrics adapter "
        "needed) instead of a plain HPA.",
    )


class InferenceRouting(Spec):
    """Routing through the Gateway API inference extension: an InferencePool of the server pods, picked by an
    endpoint picker (EPP) that reads their queue and KV-cache metrics, and an HTTPRoute from a Gateway to it."""

    gateway: str = Field(..., description="Name of the Gateway the HTTPRoute attaches to.")
    gateway_namespace: str | None = Field(None, description="Namespace of the Gateway (default: the release's).")
    endpoint_picker: str = Field(..., description="Service name of the endpoint picker (EPP) serving this pool.")
    endpoint_picker_port: int = Field(9002, ge=1, le=65535, description="Port of the endpoint picker's Service.")
    path: str = Field("/", pattern=r"^/", description="Path prefix the HTTPRoute sends to the pool.")


class Monitoring(Spec):
    """Prometheus scraping of the server's /metrics."""

    service_monitor: bool = Field(
        True,
        description="Create a Prometheus Operator ServiceMonitor (only where its "
        "CRDs are installed; otherwise left out with a warning).",
    )
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval.")
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels of the ServiceMonitor, e.g. the `release` label your Prometheus selects.",
    )


class DisruptionBudget(Spec):
    """A PodDisruptionBudget: how many server pods node drains and upgrades may take down at once."""

    max_unavailable: int = Field(
        1, ge=0, description="Server pods that may be down at once during voluntary disruptions."
    )


class EnvVar(Spec):
    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable name.")
    value: str | None = Field(None, description="Plain value (never a secret: use `secret`).")
    secret: SecretRef | None = Field(None, description="Take the value from a Kubernetes Secret (e.g. HF_TOKEN).")


class ManifestSpec(Spec):
    model: ModelSpec = Field(..., description="The model to load.")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters: name -> local path or hub id; requests select one by name."
    )
    backend: BackendSpec = Field(default_factory=BackendSpec, description="Inference backend and its options.")
    parallelism: Parallelism = Field(
        default_factory=Parallelism, description="Tensor/pipeline/data parallel sizes and device_map."
    )
    multimodal: Multimodal = Field(default_factory=Multimodal, description="Limits on images, video and audio.")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Default sampling settings (requests may override them)."
    )
    server: ServerSpec | None = Field(None, description="Server settings (kind Deployment).")
    job: JobSpec | None = Field(None, description="Dataset and results (kind InferenceJob).")
    replicas: int = Field(1, ge=0, description="Server pods (kind Deployment).")
    image: str | None = Field(None, description="Container image (default: swiftops/swiftops:<version>-<backend>).")
    resources: Resources = Field(default_factory=Resources, description="GPUs, CPU, memory and shared memory per pod.")
    placement: Placement = Field(default_factory=Placement, description="Where the pods may run.")
    cache: Cache | None = Field(
        None, description="Persistent model cache (default: none; weights are downloaded into the pod at each start)."
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables, plain or from Secrets.")
    autoscaling: Autoscaling | None = Field(
        None, description="Autoscale the server pods (kind Deployment; default: spec.replicas pods)."
    )
    monitoring: Monitoring | None = Field(None, description="Prometheus scraping (kind Deployment).")
    disruption_budget: DisruptionBudget | None = Field(
        None, description="A PodDisruptionBudget for the server (kind Deployment)."
    )
    routing: InferenceRouting | None = Field(
        None,
        description="An InferencePool and HTTPRoute for clusters "
        "running the Gateway API inference extension "
        "(kind Deployment).",
    )


class Manifest(BaseSettings):
    """A swiftops manifest. SWIFTOPS_<PATH> environment variables (path joined with `__`) override fields."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        nested_model_default_partial_update=False,
    )

    apiVersion: Literal["swiftops/v1"] = Field(..., description="Manifest format version: swiftops/v1.")
    kind: Literal["Deployment", "InferenceJob"] = Field(
        ..., description="Deployment (an OpenAI server) or InferenceJob (batch inference)."
    )
    metadata: Metadata = Field(..., description="Name, namespace and labels.")
    spec: ManifestSpec = Field(..., description="What to run and where.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ):
        # Earlier sources win: the environment overrides the manifest file (given as init kwargs).
        return env_settings, init_settings

    @property
    def server_or_default(self) -> Any:
        return self.spec.server or ServerSpec()

    # Values derived from the manifest for the pod, defined here once: `docker run` (swiftops.manifest.render)
    # and the Helm chart (handed to it as the `resolved` values) read them; the chart computes none of them.

    @property
    def needed_gpus(self) -> int:
        """GPUs one pod's parallelism uses, one process each: tensor x pipeline x data (x torchrun processes of a
        job)."""
        p = self.spec.parallelism
        processes = (getattr(self.spec.job, "nproc_per_node", None) or 1) if self.kind == "InferenceJob" else 1
        return p.tensor * p.pipeline * p.data * processes

    @property
    def gpu_count(self) -> int:
        """GPUs per pod: declared, or derived from the parallelism (one source of truth)."""
        declared = self.spec.resources.gpu.count
        return declared if declared is not None else self.needed_gpus

    @property
    def shm_size(self) -> str | None:
        """Size of the pod's /dev/shm: declared, else 8Gi when more than one of its processes talks over NCCL
        (tensor, pipeline or data parallel, or several torchrun processes of a job), else None (the runtime's)."""
        return self.spec.resources.shm or (DEFAULT_NCCL_SHM if self.needed_gpus > 1 else None)

    @property
    def cache_path(self) -> str:
        """Where the model cache is mounted in the container (HF_HOME and MODELSCOPE_CACHE live inside it)."""
        return self.spec.cache.mount_path if self.spec.cache else DEFAULT_CACHE_PATH


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of a manifest (`swiftops schema`, manifests/schema.json)."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://swiftops.dev/schemas/manifest-v1.json"
    schema["title"] = "swiftops manifest (apiVersion swiftops/v1)"
    return schema
