"""Every engine is built the same way from the settings models (swiftops/protocol/settings.py):

    Engine.from_settings(model, engine, generation, media, serving=..., served_model_name=...)  # CLI, server
    Engine(model, adapters, **settings_fields)                                                 # Python API

The Python API's keywords are the settings' field names (`PtEngine(model, max_batch_size=8)`,
`VllmEngine(model, tensor_parallel_size=2)`), split here into the settings models, so the Python API, the CLI and
manifests share one validation; a keyword that is no setting, or a setting the engine does not use, is a
ConfigError naming it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Collection
from typing import Any

from pydantic import ValidationError

from swiftops.engines.base import InferEngine
from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.response_builder import collect_response, stream_response
from swiftops.media.policy import MediaPolicy
from swiftops.protocol import AdapterRequest, InferRequest, RequestConfig
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings

# ms-swift's (and the libraries' own) keyword names for the same settings, so ms-swift code runs unchanged.
ALIASES = {
    "vLLM": {"max_num_seqs": "max_batch_size"},
    "LMDeploy": {"tp": "tensor_parallel_size", "session_len": "max_model_len"},
}
SECTIONS = (ModelSettings, EngineSettings, GenerationSettings)


def split_options(
    options: dict[str, Any], engine_name: str, reads: Collection[str] | None = None, hint: str = ""
) -> tuple[ModelSettings, EngineSettings, GenerationSettings]:
    """Keyword arguments named like settings fields -> (ModelSettings, EngineSettings, GenerationSettings).

    `reads`: the fields the engine uses (None: all); another field given a value other than its default is refused,
    not ignored. A None for a field whose default is not None means "the default" (`torch_dtype=None`)."""
    sections: dict[type, dict[str, Any]] = {section: {} for section in SECTIONS}
    aliases = ALIASES.get(engine_name, {})
    for key, value in options.items():
        key = aliases.get(key, key)
        owner = next((s for s in SECTIONS if key in s.model_fields), None)
        if owner is None:
            raise ConfigError(
                f"{engine_name} has no option {key!r}: its keywords are the settings' field names "
                f"(`swiftops infer --help` lists them){hint}",
                param=key,
            )
        if key == "torch_dtype" and value is not None and not isinstance(value, str):
            value = str(value).removeprefix("torch.")  # a torch.dtype, as ms-swift passes it: its name
        default = owner.model_fields[key].get_default(call_default_factory=True)
        if value is None and default is not None:
            continue
        if reads is not None and key not in reads and value != default:
            raise ConfigError(
                f"{engine_name} does not use {key!r} (an option of another backend or task); drop it", param=key
            )
        sections[owner][key] = value
    try:
        return (
            ModelSettings(**sections[ModelSettings]),
            EngineSettings(**sections[EngineSettings]),
            GenerationSettings(**sections[GenerationSettings]),
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{engine_name} option {name}: {error['msg']}", param=name) from None


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
            {"model": model, "adapters": adapters or {}, "infer_backend": self.backend, **options},
            self.library,
            hint=f"; options of {self.library} itself go in engine_kwargs={{...}}",
        )
        self.media_policy = MediaPolicy.permissive()  # the Python API: the user's own files and network
        self._setup(model_settings, engine_settings, generation, served_model_name)

    @classmethod
    def from_settings(
        cls,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings | None = None,
        media: MediaSettings | None = None,
        *,
        serving: bool = False,
        served_model_name: str | None = None,
    ) -> SettingsEngine:
        """The signature every engine shares. `serving`: requests come from network clients, so the images we load
        for the library follow the server's media policy (no local paths, no private addresses unless allowed, the
        size and time caps of `media`); videos and audios are refused before they reach it (`require`)."""
        self = cls.__new__(cls)
        self.media_policy = MediaPolicy.for_server(media) if serving else MediaPolicy.permissive(media)
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
