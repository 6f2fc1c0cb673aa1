"""Which manifest field feeds which `swiftops deploy|infer` flag (and which environment variable).

The settings models (swiftops/protocol/settings.py) are the one source of truth for flags: every
one of their fields is reachable from a manifest path here (tests/manifest/test_settings_map.py
checks both directions). `PENDING_FLAGS` are flags ms-swift/vLLM users expect that have no
settings field yet; they render as `--name` all the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel

from swiftops.protocol.settings import (EngineSettings, GenerationSettings, InferSettings, ModelSettings,
                                        ServerSettings)

Command = Literal["deploy", "infer"]


@dataclass(frozen=True)
class FlagMapping:
    """Manifest field `path` (dotted, from the manifest root) -> `--flag` of `commands`."""

    path: str
    flag: str
    settings: Optional[type[BaseModel]]  # None: a pending flag with no settings field yet
    commands: tuple[Command, ...] = ("deploy", "infer")


def _same_names(section: str, settings: type[BaseModel], commands: tuple[Command, ...],
                exclude: tuple[str, ...] = ()) -> list[FlagMapping]:
    return [FlagMapping(f"{section}.{name}", name, settings, commands)
            for name in settings.model_fields if name not in exclude]


DEPLOY: tuple[Command, ...] = ("deploy",)
INFER: tuple[Command, ...] = ("infer",)

FLAG_MAPPINGS: list[FlagMapping] = [
    FlagMapping("spec.model.id", "model", ModelSettings),
    FlagMapping("spec.model.revision", "model_revision", ModelSettings),
    FlagMapping("spec.adapters", "adapters", ModelSettings),
    FlagMapping("spec.model.dtype", "torch_dtype", ModelSettings),
    FlagMapping("spec.parallelism.device_map", "device_map", ModelSettings),
    FlagMapping("spec.model.max_model_len", "max_model_len", ModelSettings),
    FlagMapping("spec.model.trust_remote_code", "trust_remote_code", ModelSettings),
    FlagMapping("spec.backend.name", "infer_backend", EngineSettings),
    *_same_names("spec.backend.options", EngineSettings, ("deploy", "infer"), exclude=("infer_backend",)),
    *_same_names("spec.generation", GenerationSettings, ("deploy", "infer")),
    *_same_names("spec.job", InferSettings, INFER),
    *_same_names("spec.server", ServerSettings, DEPLOY, exclude=("api_key",)),
    # Pending: flags without a settings field yet (the lead adds them to the settings models).
    FlagMapping("spec.model.quantization.method", "quant_method", None),
    FlagMapping("spec.model.quantization.bits", "quant_bits", None),
    FlagMapping("spec.parallelism.tensor", "tensor_parallel_size", None),
    FlagMapping("spec.parallelism.pipeline", "pipeline_parallel_size", None),
    FlagMapping("spec.parallelism.data", "data_parallel_size", None),
    FlagMapping("spec.parallelism.max_memory", "max_memory", None),
    FlagMapping("spec.multimodal.limit_per_prompt", "limit_mm_per_prompt", None),
    FlagMapping("spec.backend.options.lmdeploy_backend", "lmdeploy_backend", None),
    FlagMapping("spec.backend.options.enable_prefix_caching", "enable_prefix_caching", None),
    FlagMapping("spec.backend.options.max_loras", "max_loras", None),
    FlagMapping("spec.backend.options.max_lora_rank", "max_lora_rank", None),
    FlagMapping("spec.backend.options.engine_kwargs", "engine_kwargs", None),
    FlagMapping("spec.job.shards", "num_shards", None, INFER),
]

# Settings fields that come from a Secret, never from a manifest value: field -> (path, env var).
SECRET_SETTINGS: dict[tuple[type[BaseModel], str], tuple[str, str]] = {
    (ServerSettings, "api_key"): ("spec.server.api_key_secret", "SWIFTOPS_API_KEY"),
}

# Manifest fields that become environment variables of the process (ms-swift's names for media limits).
ENV_MAPPINGS: dict[str, str] = {
    "spec.multimodal.max_pixels": "MAX_PIXELS",
    "spec.multimodal.min_pixels": "MIN_PIXELS",
    "spec.multimodal.video_max_pixels": "VIDEO_MAX_PIXELS",
    "spec.multimodal.video_min_pixels": "VIDEO_MIN_PIXELS",
    "spec.multimodal.fps": "FPS",
    "spec.multimodal.fps_max_frames": "FPS_MAX_FRAMES",
}

# Manifest fields for the container and the cluster only (no flag, no process env): path prefixes.
CLUSTER_ONLY_PREFIXES: tuple[str, ...] = (
    "apiVersion", "kind", "metadata", "spec.server.api_key_secret", "spec.job.parallel_pods",
    "spec.job.backoff_limit", "spec.replicas", "spec.image", "spec.resources", "spec.placement", "spec.cache",
    "spec.env",
)

PENDING_FLAGS: tuple[str, ...] = tuple(m.flag for m in FLAG_MAPPINGS if m.settings is None)

COMMAND_SETTINGS: dict[Command, tuple[type[BaseModel], ...]] = {
    "deploy": (ModelSettings, EngineSettings, GenerationSettings, ServerSettings),
    "infer": (ModelSettings, EngineSettings, GenerationSettings, InferSettings),
}


def mappings_for(command: Command) -> list[FlagMapping]:
    return [m for m in FLAG_MAPPINGS if command in m.commands]
