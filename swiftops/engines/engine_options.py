"""Python-API keyword arguments of the library-backed engines (`VllmEngine(model, tensor_parallel_size=2)`)
split into the settings models, so the Python API, the CLI and manifests share one validation."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ValidationError

from swiftops.engines.base import InferEngine
from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.response_builder import collect_response, stream_response
from swiftops.protocol import AdapterRequest, InferRequest, RequestConfig
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings

# ms-swift's (and the libraries' own) keyword names for the same settings, so ms-swift code runs unchanged.
ALIASES = {
    "vLLM": {"max_num_seqs": "max_batch_size"},
    "LMDeploy": {"tp": "tensor_parallel_size", "session_len": "max_model_len"},
}


def split_options(options: dict[str, Any], library: str) -> tuple[ModelSettings, EngineSettings, GenerationSettings]:
    """Keyword arguments named like settings fields -> (ModelSettings, EngineSettings, GenerationSettings)."""
    sections: dict[type[BaseModel], dict[str, Any]] = {ModelSettings: {}, EngineSettings: {}, GenerationSettings: {}}
    aliases = ALIASES.get(library, {})
    for key, value in options.items():
        key = aliases.get(key, key)
        owner = next((s for s in sections if key in s.model_fields), None)
        if owner is None:
            raise ConfigError(
                f"unknown engine option {key!r}; options of {library} itself go in engine_kwargs={{...}}", param=key
            )
        sections[owner][key] = value
    try:
        return (
            ModelSettings(**sections[ModelSettings]),
            EngineSettings(**sections[EngineSettings]),
            GenerationSettings(**sections[GenerationSettings]),
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid engine option: {exc}") from None


def model_sampling_defaults(generation_config: Any) -> dict[str, Any]:
    """The sampling defaults a checkpoint's generation_config.json asks for (used when a request sets none)."""
    if generation_config is None or not getattr(generation_config, "do_sample", False):
        return {}
    defaults: dict[str, Any] = {"do_sample": True}
    for key in ("temperature", "top_k", "top_p"):
        value = getattr(generation_config, key, None)
        if value is not None:
            defaults[key] = value
    return defaults


def resolve_sampling(
    config: Any, generation: GenerationSettings, model_defaults: dict[str, Any] | None = None
) -> tuple[float, int | None, float | None]:
    """(temperature, top_k, top_p) of a request, the same on every backend. Per field: the request, then the
    engine's generation defaults (--temperature ...), then the checkpoint's generation_config, which applies only
    when neither sets a temperature (a checkpoint that does not sample is greedy)."""
    temperature = config.temperature if config.temperature is not None else generation.temperature
    top_k = config.top_k if config.top_k is not None else generation.top_k
    top_p = config.top_p if config.top_p is not None else generation.top_p
    if temperature is None:
        model_defaults = model_defaults or {}
        temperature = float(model_defaults.get("temperature", 1.0)) if model_defaults else 0.0
        top_k = top_k if top_k is not None else model_defaults.get("top_k")
        top_p = top_p if top_p is not None else model_defaults.get("top_p")
    return float(temperature), top_k, top_p


class SettingsEngine(InferEngine):
    """A backend engine built from swiftops' settings: `Engine(model, adapters, **settings_fields)` in Python,
    `Engine.from_settings(...)` from the CLI and the server. Subclasses name their `backend` and `library`
    and implement `_setup`."""

    backend: str = ""
    library: str = ""  # as users know it, for error messages

    def __init__(
        self,
        model: str,
        adapters: dict[str, str] | list[str] | None = None,
        *,
        served_model_name: str | None = None,
        **options: Any,
    ) -> None:
        model_settings, engine_settings, generation = split_options(
            {"model": model, "adapters": adapters or {}, "infer_backend": self.backend, **options}, self.library
        )
        self._setup(model_settings, engine_settings, generation, served_model_name)

    @classmethod
    def from_settings(
        cls,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings | None = None,
        served_model_name: str | None = None,
    ) -> SettingsEngine:
        self = cls.__new__(cls)
        self._setup(model, engine, generation or GenerationSettings(), served_model_name)
        return self

    @abstractmethod
    def _setup(
        self,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings,
        served_model_name: str | None,
    ) -> None:
        """Build the library's engine from the settings."""

    @abstractmethod
    def _start(
        self, request: InferRequest, config: RequestConfig, adapter_request: AdapterRequest | None
    ) -> tuple[AsyncIterator[SequenceOutput], bool]:
        """The request's outputs (generation starts as they are read) and whether they carry logprobs."""

    async def infer_async(
        self,
        request: InferRequest,
        request_config: RequestConfig | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
    ):
        config = request_config or RequestConfig()
        outputs, want_logprobs = self._start(request, config, adapter_request)
        tools = bool(request.tools) and request.tool_choice != "none"
        if config.stream:
            return stream_response(outputs, config.n, self.model_name, tools, want_logprobs)
        return await collect_response(outputs, config.n, self.model_name, tools, want_logprobs)

    async def generate(
        self, request: InferRequest, config: RequestConfig, *, adapter_request: AdapterRequest | None = None
    ) -> AsyncIterator[SequenceOutput]:
        return self._start(request, config, adapter_request)[0]
