"""Which manifest field feeds which `swiftops deploy|infer` flag (and which environment variable).

The settings models (swiftops/protocol/settings.py) are the one source of truth for flags: every
one of their fields is reachable from a manifest path here (tests/manifest/test_settings_map.py
checks both directions and parses rendered argv with the real CLI options). Most sections carry
the settings' own field names; `RENAMED` lists the fields whose manifest name or place differs.
A flag with no settings field yet (ms-swift/vLLM names such as --tensor_parallel_size) renders all
the same and is listed by `pending_flags()`; once a settings model gains the field, its mapping
picks the owner up by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from swiftops.protocol.settings import (
    EngineSettings,
    GenerationSettings,
    InferSettings,
    MediaSettings,
    ModelSettings,
    ServerSettings,
)

Command = Literal["deploy", "infer"]
BOTH: tuple[Command, ...] = ("deploy", "infer")
DEPLOY: tuple[Command, ...] = ("deploy",)
INFER: tuple[Command, ...] = ("infer",)

ALL_SETTINGS: tuple[type[BaseModel], ...] = (
    ModelSettings,
    EngineSettings,
    GenerationSettings,
    MediaSettings,
    InferSettings,
    ServerSettings,
)
COMMAND_SETTINGS: dict[Command, tuple[type[BaseModel], ...]] = {
    "deploy": (ModelSettings, EngineSettings, GenerationSettings, MediaSettings, ServerSettings),
    "infer": (ModelSettings, EngineSettings, GenerationSettings, MediaSettings, InferSettings),
}


@dataclass(frozen=True)
class FlagMapping:
    """Manifest field `path` (dotted, from the manifest root) -> `--flag` of `commands`."""

    path: str
    flag: str
    settings: type[BaseModel] | None  # None: a pending flag with no settings field yet
    commands: tuple[Command, ...] = BOTH


def owner_of(flag: str, commands: tuple[Command, ...] = BOTH) -> type[BaseModel] | None:
    for settings in ALL_SETTINGS:
        if flag in settings.model_fields and any(settings in COMMAND_SETTINGS[c] for c in commands):
            return settings
    return None


# (manifest path, flag, commands) where the manifest's name or place differs from the flag's.
RENAMED: list[tuple[str, str, tuple[Command, ...]]] = [
    ("spec.model.id", "model", BOTH),
    ("spec.model.revision", "model_revision", BOTH),
    ("spec.model.dtype", "torch_dtype", BOTH),
    ("spec.model.quantization.method", "quant_method", BOTH),
    ("spec.model.quantization.bits", "quant_bits", BOTH),
    ("spec.adapters", "adapters", BOTH),
    ("spec.backend.name", "infer_backend", BOTH),
    ("spec.parallelism.device_map", "device_map", BOTH),
    ("spec.parallelism.max_memory", "max_memory", BOTH),
    ("spec.parallelism.tensor", "tensor_parallel_size", BOTH),
    ("spec.parallelism.pipeline", "pipeline_parallel_size", BOTH),
    ("spec.parallelism.data", "data_parallel_size", BOTH),
    ("spec.multimodal.limit_per_prompt", "limit_mm_per_prompt", BOTH),
    ("spec.job.shards", "num_shards", INFER),
]
RENAMED_FLAGS = frozenset(flag for _, flag, _ in RENAMED)

# Settings fields that come from a Secret, never from a manifest value: field -> (manifest path, env var).
SECRET_SETTINGS: dict[str, tuple[str, str]] = {
    "api_key": ("spec.server.api_key_secret", "SWIFTOPS_API_KEY"),
}
# Settings fields a manifest does not set, and why.
NOT_IN_MANIFEST: dict[str, str] = {
    "shard_index": "each pod of a sharded job takes its shard from JOB_COMPLETION_INDEX",
}
EXCLUDED_FROM_SECTIONS = RENAMED_FLAGS | frozenset(SECRET_SETTINGS) | frozenset(NOT_IN_MANIFEST)

# Sections carrying the settings' own field names: (manifest path, settings model, commands).
SAME_NAME_SECTIONS: list[tuple[str, type[BaseModel], tuple[Command, ...]]] = [
    ("spec.model", ModelSettings, BOTH),
    ("spec.backend.options", EngineSettings, BOTH),
    ("spec.generation", GenerationSettings, BOTH),
    ("spec.multimodal", MediaSettings, BOTH),
    ("spec.job", InferSettings, INFER),
    ("spec.server", ServerSettings, DEPLOY),
]
# Manifest-only fields with flag names of their own in those sections (engine options of vLLM / LMDeploy).
SAME_NAME_EXTRAS: list[tuple[str, str, tuple[Command, ...]]] = [
    ("spec.backend.options", "lmdeploy_backend", BOTH),
    ("spec.backend.options", "enable_prefix_caching", BOTH),
    ("spec.backend.options", "max_loras", BOTH),
    ("spec.backend.options", "max_lora_rank", BOTH),
    ("spec.backend.options", "engine_kwargs", BOTH),
]


def _build() -> list[FlagMapping]:
    mappings = [FlagMapping(path, flag, owner_of(flag, commands), commands) for path, flag, commands in RENAMED]
    for section, settings, commands in SAME_NAME_SECTIONS:
        mappings += [
            FlagMapping(f"{section}.{name}", name, settings, commands)
            for name in settings.model_fields
            if name not in EXCLUDED_FROM_SECTIONS
        ]
    seen = {m.path for m in mappings}
    mappings += [
        FlagMapping(f"{section}.{flag}", flag, owner_of(flag, commands), commands)
        for section, flag, commands in SAME_NAME_EXTRAS
        if f"{section}.{flag}" not in seen
    ]
    return mappings


FLAG_MAPPINGS: list[FlagMapping] = _build()

# Manifest fields that become environment variables of the process (ms-swift's names for media limits).
# Media limits are flags (MediaSettings) and also ms-swift's environment variables, which other backends'
# processors (vLLM's, LMDeploy's Qwen-VL utilities) read.
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
    "apiVersion",
    "kind",
    "metadata",
    "spec.server.api_key_secret",
    "spec.job.parallel_pods",
    "spec.job.backoff_limit",
    "spec.job.total_gpus",
    "spec.replicas",
    "spec.image",
    "spec.resources",
    "spec.placement",
    "spec.cache",
    "spec.env",
    "spec.autoscaling",
    "spec.monitoring",
    "spec.disruption_budget",
    "spec.routing",
)


def mappings_for(command: Command) -> list[FlagMapping]:
    return [m for m in FLAG_MAPPINGS if command in m.commands]


def pending_flags() -> list[str]:
    """Flags the manifest renders that no settings model has yet (the CLI must gain them)."""
    return sorted({m.flag for m in FLAG_MAPPINGS if m.settings is None})
