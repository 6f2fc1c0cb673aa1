"""`build_engine`: settings in, an `InferEngine` out, for whichever backend `--infer_backend` names.

Backends are imported here only when chosen, so vllm and lmdeploy stay optional extras.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from swiftops.engines.base import InferEngine
from swiftops.engines.gguf_source import GgufSource, gguf_source
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings

# backend -> (module, engine class, pip extra / library that must be importable)
BACKENDS = {
    "pt": ("swiftops.engines.pt", "PtEngine", None),
    "vllm": ("swiftops.engines.vllm", "VllmEngine", "vllm"),
    "lmdeploy": ("swiftops.engines.lmdeploy", "LmdeployEngine", "lmdeploy"),
}

# A hub id: `org/name` with no leading `.`, `/` or `~` (those spell local paths).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and ".." not in model


def check_model_location(model: ModelSettings) -> None:
    """Fail before any import of torch when --model is missing or names a local path that is not there."""
    from swiftops.engines.model_source import apply_adapter_args

    model, _ = apply_adapter_args(model)  # `--adapters DIR` alone: the base model from its args.json
    if not model.model:
        raise ConfigError(
            "no model given; pass --model with a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a "
            "local path (`swiftops tiny-model DIR` writes a small offline one)",
            param="model",
        )
    gguf = gguf_source(model.model, model.gguf_file)
    path = Path(model.model).expanduser()
    if gguf is not None:
        _check_gguf_location(gguf)
    elif not path.exists() and not looks_like_hub_id(model.model):
        raise ConfigError(
            f"model path {model.model} does not exist; pass --model an existing local directory "
            f"or a hub id like org/name",
            param="model",
        )
    elif path.exists() and not path.is_dir():
        raise ConfigError(
            f"model path {model.model} is a file; pass --model the directory holding config.json (or a .gguf file)",
            param="model",
        )
    if model.tokenizer and not Path(model.tokenizer).expanduser().exists() and not looks_like_hub_id(model.tokenizer):
        raise ConfigError(
            f"tokenizer path {model.tokenizer} does not exist; pass --tokenizer an existing directory or a hub id",
            param="tokenizer",
        )
    if model.template:
        from swiftops.template.template_file import read_chat_template

        read_chat_template(model.template)  # a template name or a missing file fails before weights load
    if model.default_adapter is not None and model.default_adapter not in model.adapters:
        raise ConfigError(
            f"--default_adapter {model.default_adapter} is not among --adapters "
            f"({', '.join(model.adapters) or 'none'})",
            param="default_adapter",
        )
    for name, adapter in model.adapters.items():
        if not Path(adapter).expanduser().exists() and not looks_like_hub_id(adapter):
            raise ConfigError(
                f"adapter {name}: path {adapter} does not exist; pass --adapters name=path with an "
                f"existing directory or a hub id",
                param="adapters",
            )


def _check_gguf_location(gguf: GgufSource) -> None:
    """A local GGUF file must be there; a hub repo's file is downloaded by transformers (or vLLM)."""
    if gguf.is_local:
        if not Path(gguf.path).expanduser().is_file():
            raise ConfigError(
                f"GGUF file {gguf.path} does not exist; pass --model path/to/model.gguf "
                f"(or --model DIR --gguf_file NAME) with an existing file",
                param="model",
            )
    elif not looks_like_hub_id(gguf.location):
        raise ConfigError(
            f"GGUF file {gguf.path} does not exist; pass --model path/to/model.gguf, or "
            f"--model org/repo --gguf_file NAME for a file in a hub repo",
            param="model",
        )


def _gguf_for_pt(model: ModelSettings) -> ModelSettings:
    """The pt engine takes a GGUF checkpoint as one path (`PtEngine("dir/model.gguf")`): fold --gguf_file in."""
    gguf = gguf_source(model.model, model.gguf_file)
    if gguf is None:
        return model
    if model.task_type not in (None, "causal_lm"):
        raise ConfigError(
            f"GGUF checkpoints load as causal LMs only; drop --task_type {model.task_type}", param="task_type"
        )
    return model.model_copy(update={"model": gguf.path, "gguf_file": None})


def _engine_class(backend: str) -> type[InferEngine]:
    module_name, class_name, library = BACKENDS[backend]
    if library is not None:
        try:
            importlib.import_module(library)
        except ImportError:
            raise ConfigError(
                f"--infer_backend {backend} needs the {library} library, which is not installed; "
                f"run pip install 'swiftops[{backend}]' (or use --infer_backend pt)"
            ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigError(
                f"--infer_backend {backend} is not available in this version of swiftops; use --infer_backend pt"
            ) from None
        raise
    return getattr(module, class_name)


def _pt_engine_class(model: ModelSettings) -> type[InferEngine]:
    """The pt backend's engine for the model's task: generation, embeddings or scores."""
    from swiftops.engines.pt.task import model_task, task_engine_class

    return task_engine_class(model_task(model.model or "", model.task_type)) or _engine_class("pt")


def build_engine(
    model: ModelSettings,
    engine: EngineSettings,
    generation: GenerationSettings,
    media: MediaSettings | None = None,
    *,
    serving: bool = False,
) -> InferEngine:
    """Validate the settings, then load the model with the chosen backend; every engine class is built by its
    `from_settings` (swiftops.engines.engine_options).

    `serving`: requests come from network clients, so media follow the server's policy (no local paths,
    no private addresses unless allowed); the CLI and Python API read the user's own files."""
    from swiftops.engines.model_source import apply_adapter_args, fetch_hub_ids

    check_model_location(model)
    model, generation = apply_adapter_args(model, generation)
    served_name = Path(model.model or "model").name  # the hub id's name, before a ModelScope snapshot path
    model = fetch_hub_ids(model, looks_like_hub_id)  # ModelScope, when --use_hf false asks for it
    if model.tokenizer and engine.infer_backend != "vllm":
        raise ConfigError(
            f"--tokenizer is for --infer_backend vllm; the {engine.infer_backend} engine reads the "
            f"tokenizer from the checkpoint (a GGUF file's included): drop --tokenizer",
            param="tokenizer",
        )
    if not model.use_chat_template and engine.infer_backend != "pt":
        raise ConfigError(
            f"--use_chat_template false runs on --infer_backend pt; the {engine.infer_backend} engine "
            f"always applies the chat template (send raw text to /v1/completions instead)",
            param="use_chat_template",
        )
    if engine.infer_backend == "lmdeploy" and gguf_source(model.model, model.gguf_file) is not None:
        raise ConfigError(
            "LMDeploy does not read GGUF checkpoints; use --infer_backend pt or vllm", param="infer_backend"
        )
    if engine.infer_backend == "pt":
        model = _gguf_for_pt(model)
    engine_class = _pt_engine_class(model) if engine.infer_backend == "pt" else _engine_class(engine.infer_backend)
    name = None if served_name == Path(model.model or "").name else served_name
    return engine_class.from_settings(model, engine, generation, media, serving=serving, served_model_name=name)
