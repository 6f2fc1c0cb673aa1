"""`VllmEngine`: the `InferEngine` interface on vLLM's async engine (`AsyncLLM`).

    engine = VllmEngine("Qwen/Qwen2.5-7B-Instruct", adapters={"sql": "./loras/sql"}, tensor_parallel_size=2)

vLLM is imported when an engine is built, never at `import swiftops`. Prompts are rendered with the
model's own chat template here (the same code as the pt engine), so both backends see identical
token ids; vLLM does scheduling, sampling, stop strings and LoRA. Data parallelism
(`data_parallel_size`) is vLLM's own: one AsyncLLM front-end balancing requests over engine replicas.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from swiftops.engines.engine_options import SettingsEngine
from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.prompt_checks import check_logit_token_ids, check_prompt_length
from swiftops.engines.vllm import args as vllm_args
from swiftops.engines.vllm.outputs import OutputTracker
from swiftops.engines.vllm.prompt import has_media, load_media, split_media
from swiftops.protocol import (
    AdapterRequest,
    BadRequestError,
    EngineError,
    InferRequest,
    ModelNotFoundError,
    RequestConfig,
    SwiftopsError,
    UnsupportedError,
)
from swiftops.protocol.capabilities import require
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.sampling import effective_config, model_sampling_defaults
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings
from swiftops.protocol.structured_output import output_constraint
from swiftops.template.chat_template import encode_prompt, render_prompt

logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'swiftops[vllm]'"
_request_ids = itertools.count()


def import_vllm() -> Any:
    """The vllm module (with the parts we use loaded), or a ConfigError (CLI exit 2) that says what to do."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(
            f"the vllm backend needs the vllm library, which is not installed ({exc}); "
            f"run {INSTALL_HINT} on a machine with an NVIDIA GPU, or use --infer_backend pt"
        ) from None
    try:  # vllm's top level is lazy: a broken install (mismatched torch, CUDA-only extensions) fails here
        _ = vllm.AsyncEngineArgs, vllm.AsyncLLMEngine, vllm.SamplingParams
        import vllm.lora.request
        import vllm.sampling_params
    except (ImportError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"vllm {getattr(vllm, '__version__', '')} is installed but does not load: "
            f"{type(exc).__name__}: {exc}; reinstall it with {INSTALL_HINT} (it pins its own torch)"
        ) from None
    return vllm


class VllmEngine(SettingsEngine):
    """vLLM behind swiftops' interface.

    Keyword arguments are the settings' field names (see `swiftops infer --help`)."""

    backend = "vllm"
    library = "vLLM"
    max_model_len: int  # known once the engine is built (the interface allows None for backends that do not know it)

    def _setup(
        self,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings,
        served_model_name: str | None,
    ) -> None:
        vllm = import_vllm()
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        self._LoRARequest, self._delta = LoRARequest, RequestOutputKind.DELTA
        self._vllm = vllm
        self.generation = generation
        engine_kwargs = vllm_args.engine_args_kwargs(model, engine, generation)
        self.model_name = served_model_name or os.path.basename(os.path.normpath(engine_kwargs["model"]))
        self._lora_enabled = bool(engine_kwargs.get("enable_lora"))
        self._adapters: dict[str, Any] = {}
        for name, path in model.adapters.items():
            self._register_adapter(name, path)
        self._default_adapter = model.default_adapter  # a bare --adapters path: for requests that name none
        self.tokenizer, self._model_defaults = self._load_tokenizer(model)
        logger.info("vllm engine: building AsyncLLM with %s", engine_kwargs)
        try:
            engine_args = vllm.AsyncEngineArgs(**engine_kwargs)
        except TypeError as exc:  # engine_kwargs naming an argument this vLLM release does not have
            raise ConfigError(
                f"vLLM {getattr(vllm, '__version__', '')} rejected the engine arguments: {exc}; "
                f"check engine_kwargs against this release's AsyncEngineArgs",
                param="engine_kwargs",
            ) from None
        self._llm = vllm.AsyncLLMEngine.from_engine_args(engine_args)
        model_config = getattr(self._llm, "model_config", None)
        self.max_model_len = int(
            getattr(model_config, "max_model_len", 0)
            or model.max_model_len
            or getattr(self.tokenizer, "model_max_length", 0)
            or 2048
        )
        self._active: set[str] = set()

    @staticmethod
    def _load_tokenizer(model: ModelSettings) -> tuple[Any, dict[str, Any]]:
        from transformers import AutoTokenizer, GenerationConfig

        source, kwargs = vllm_args.tokenizer_source(model)  # --tokenizer, a GGUF file's metadata or the model's
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        generation_config = None
        if vllm_args.gguf_model_path(model) is None:  # a GGUF file has no generation_config.json
            # no generation_config.json: greedy unless the request samples
            assert model.model is not None  # narrows for mypy: engine_args_kwargs refused a missing --model
            with contextlib.suppress(OSError):
                generation_config = GenerationConfig.from_pretrained(
                    model.model,
                    revision=model.model_revision,  # type: ignore[arg-type]  # transformers reads None as the default branch
                )
        return tokenizer, model_sampling_defaults(generation_config)

    # ---- adapters --------------------------------------------------------------------------------
    def _register_adapter(self, name: str, path: str) -> Any:
        kwargs = vllm_args.lora_request_kwargs(name, path, len(self._adapters) + 1)
        self._adapters[name] = self._LoRARequest(**kwargs)
        return self._adapters[name]

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    def _lora_request(self, adapter_request: AdapterRequest | None) -> Any:
        if adapter_request is None or adapter_request.name == self.model_name:
            return self._adapters.get(self._default_adapter) if self._default_adapter else None
        known = self._adapters.get(adapter_request.name)
        if known is not None and (adapter_request.path is None or adapter_request.path == known.lora_path):
            return known
        if adapter_request.path is None:
            raise ModelNotFoundError(
                f"adapter {adapter_request.name!r} is not loaded; this engine serves {', '.join(self.models)}"
            )
        if not self._lora_enabled:
            raise UnsupportedError(
                "this vLLM engine was started without adapters, so LoRA is off; start it with "
                "--adapters name=path to serve adapters"
            )
        if known is not None:
            raise BadRequestError(
                f"adapter name {adapter_request.name!r} is taken by {known.lora_path}; pick another name",
                param="adapter",
            )
        return self._register_adapter(adapter_request.name, adapter_request.path)

    # ---- requests ----------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self._active)

    @property
    def num_waiting(self) -> int:
        return 0  # vLLM queues internally and does not expose the split per front-end

    def _prompt(self, request: InferRequest) -> tuple[Any, int]:
        """vLLM's prompt for a request and its length in tokens (multimodal: counted before expansion)."""
        if not has_media(request):
            ids = encode_prompt(self.tokenizer, request, self.generation.system)
            return {"prompt_token_ids": ids}, len(ids)
        messages, media = split_media(request)
        for kind in set(media) - {"image"}:
            require("vllm", f"{kind}_input")
        text = render_prompt(
            self.tokenizer,
            request.model_copy(update={"messages": messages, "images": [], "videos": [], "audios": []}),
            self.generation.system,
        )
        # The rendered template already holds the BOS it wants: vLLM must not add another (see _generate).
        length = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return {"prompt": text, "multi_modal_data": load_media(media, self.media_policy)}, length

    def _start(
        self, request: InferRequest, config: RequestConfig, adapter_request: AdapterRequest | None
    ) -> tuple[AsyncIterator[SequenceOutput], bool]:
        """The request's outputs (generation starts as they are read) and whether they carry logprobs."""
        lora_request = self._lora_request(adapter_request)
        prompt, prompt_len = self._prompt(request)
        check_prompt_length(prompt_len, self.max_model_len)
        effective = effective_config(config, self.generation, self._model_defaults)
        check_logit_token_ids(effective, len(self.tokenizer))
        sampling = vllm_args.sampling_params_kwargs(
            effective,
            prompt_len,
            self.max_model_len,
            output_constraint(config, request),
        )
        params = self._sampling_params(sampling)
        top = sampling.get("logprobs")
        tracker = OutputTracker(config.n, prompt_len, top, lambda t: self.tokenizer.decode([t]))
        return self._generate(prompt, params, lora_request, tracker), top is not None

    def _sampling_params(self, kwargs: dict[str, Any]) -> Any:
        structured = kwargs.pop("structured_outputs", None)
        try:
            if structured is not None:
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(**structured)
            return self._vllm.SamplingParams(**kwargs, output_kind=self._delta)
        except (ValueError, TypeError) as exc:  # vLLM validates ranges (e.g. logprobs above max_logprobs)
            raise BadRequestError(f"vLLM rejected the sampling settings: {exc}") from exc

    async def _generate(
        self, prompt: Any, params: Any, lora_request: Any, tracker: OutputTracker
    ) -> AsyncIterator[SequenceOutput]:
        request_id = f"swiftops-{next(_request_ids)}"
        self._active.add(request_id)
        try:
            extra = {"tokenization_kwargs": {"add_special_tokens": False}} if "prompt" in prompt else {}
            async for request_output in self._llm.generate(
                prompt, params, request_id, lora_request=lora_request, **extra
            ):
                for out in tracker.convert(request_output):
                    yield out
                if tracker.done:
                    return
        except SwiftopsError:
            raise
        except ValueError as exc:  # vLLM's input validation (prompt too long for the cache, bad media)
            raise BadRequestError(f"vLLM rejected the request: {exc}") from exc
        except Exception as exc:
            if type(exc).__name__ in ("CancelledError", "GeneratorExit"):
                raise
            raise EngineError(f"vLLM failed while generating: {type(exc).__name__}: {exc}") from exc
        finally:
            self._active.discard(request_id)
            if not tracker.done:  # cancelled or closed early: free vLLM's slot now, not when it notices
                try:
                    await self._llm.abort(request_id)
                except Exception:  # a dead engine has nothing left to free; keep the original error
                    logger.exception("vllm engine: abort of %s failed", request_id)

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
            self._llm = None
