"""`LmdeployEngine`: the `InferEngine` interface on LMDeploy's `AsyncEngine` (TurboMind or PyTorch engine).

    engine = LmdeployEngine("Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2, cache_max_entry_count=0.8)

Built as LMDeploy's own OpenAI server builds it (`autoget_backend_config`, `get_task`, then the
`AsyncEngine` / `VLAsyncEngine` class), with its loop bound to this engine's private event-loop thread:
LMDeploy binds to one loop, while callers (the server, the synchronous `infer`) come from others.
Text prompts are rendered with the model's own chat template here, as the pt and vllm engines do.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import logging
import os
import weakref
from collections.abc import AsyncIterator
from typing import Any

from swiftops.engines.engine_options import SettingsEngine
from swiftops.engines.lmdeploy import args as lm_args
from swiftops.engines.lmdeploy.outputs import ChoiceTracker, LoopRelay
from swiftops.engines.lmdeploy.token_stream import TokenStep, instance_steps
from swiftops.engines.outputs import OutputChannel, SequenceOutput
from swiftops.engines.prompt_checks import check_logit_token_ids, check_prompt_length
from swiftops.engines.vllm.prompt import has_media, split_media
from swiftops.media.image import load_image
from swiftops.protocol import (
    AdapterRequest,
    BadRequestError,
    EngineError,
    InferRequest,
    ModelNotFoundError,
    RequestConfig,
    SwiftopsError,
)
from swiftops.protocol.capabilities import require
from swiftops.protocol.errors import ConfigError
from swiftops.protocol.sampling import effective_config, model_sampling_defaults
from swiftops.protocol.settings import EngineSettings, GenerationSettings, ModelSettings
from swiftops.protocol.structured_output import output_constraint
from swiftops.template.chat_template import encode_prompt

logger = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'swiftops[lmdeploy]'"
_session_ids = itertools.count(1)


def import_lmdeploy() -> Any:
    """The lmdeploy module (with the parts we use loaded), or a ConfigError (CLI exit 2) that says what to do."""
    try:
        import lmdeploy
    except ImportError as exc:
        raise ConfigError(
            f"the lmdeploy backend needs the lmdeploy library, which is not installed ({exc}); "
            f"run {INSTALL_HINT} on a machine with an NVIDIA GPU, or use --infer_backend pt"
        ) from None
    try:  # a broken install (torch it does not support, missing CUDA libraries) fails here, not mid-build
        import lmdeploy.archs
    except (ImportError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"lmdeploy {getattr(lmdeploy, '__version__', '')} is installed but does not load: "
            f"{type(exc).__name__}: {exc}; reinstall it with {INSTALL_HINT} (it wants torch<=2.12.1)"
        ) from None
    return lmdeploy


def library_error(exc: BaseException) -> SwiftopsError:
    """LMDeploy's RequestError (code: an ErrorCode enum) -> the swiftops error with the right HTTP status."""
    code = str(getattr(getattr(exc, "code", None), "value", getattr(exc, "code", "")))
    message = getattr(exc, "message", None) or str(exc)
    if code == "context_length_exceeded":
        return BadRequestError(
            f"the prompt does not fit the model's context: {message}", param="messages", code="context_length_exceeded"
        )
    if code in ("invalid_request", "unsupported_feature"):
        return BadRequestError(f"LMDeploy rejected the request: {message}")
    if code == "model_not_found":
        return ModelNotFoundError(message)
    return EngineError(f"LMDeploy failed while generating: {type(exc).__name__}: {message}")


def _data_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class LmdeployEngine(SettingsEngine):
    """LMDeploy behind swiftops' interface; keyword arguments are the settings' field names."""

    backend = "lmdeploy"
    library = "LMDeploy"
    max_model_len: int  # known once the engine is built (the interface allows None for backends that do not know it)

    def _setup(
        self,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings,
        served_model_name: str | None,
    ) -> None:
        lmdeploy = import_lmdeploy()
        from lmdeploy.archs import autoget_backend_config, get_task

        self._lmdeploy = lmdeploy
        self.generation = generation
        self.model_name = served_model_name or os.path.basename(os.path.normpath(model.model or "model"))
        wanted = lm_args.choose_backend(model, engine)
        config_class = lmdeploy.TurbomindEngineConfig if wanted == "turbomind" else lmdeploy.PytorchEngineConfig
        try:
            config = config_class(**lm_args.backend_config_kwargs(model, engine, wanted))
        except (TypeError, ValueError, AssertionError) as exc:  # engine_kwargs unknown to this release, bad values
            raise ConfigError(
                f"LMDeploy {getattr(lmdeploy, '__version__', '')} rejected the {config_class.__name__} "
                f"arguments: {exc}",
                param="engine_kwargs",
            ) from None
        # LMDeploy moves to its PyTorch engine when TurboMind cannot run the architecture.
        backend, config = autoget_backend_config(model.model, config, trust_remote_code=model.trust_remote_code)
        if model.adapters and backend != "pytorch":
            raise ConfigError("LoRA adapters need LMDeploy's PyTorch engine; pass --lmdeploy_backend pytorch")
        self.lmdeploy_backend = backend
        self._adapters = dict(model.adapters)
        self._default_adapter = model.default_adapter  # a bare --adapters path: for requests that name none
        task, engine_class = get_task(
            backend, model.model, trust_remote_code=model.trust_remote_code, backend_config=config
        )
        extra = {}
        if task == "vlm":
            extra["vision_config"] = lmdeploy.VisionConfig(**lm_args.vision_config_kwargs(engine))
        self.tokenizer, self._model_defaults = self._load_tokenizer(model)
        logger.info("lmdeploy engine: %s backend with %s", backend, config)
        self._engine = engine_class(
            model_path=model.model,
            model_name=self.model_name,
            backend=backend,
            backend_config=config,
            trust_remote_code=model.trust_remote_code,
            **extra,
        )
        self.max_model_len = int(self._engine.session_len)
        # Token-id prompts run on the PyTorch engine's instance, without generate's per-step detokenization
        # (token_stream.py); TurboMind and media prompts go through generate.
        self._token_ids_to_instance = backend == "pytorch"
        self._running = 0
        self._choice_tasks: set[asyncio.Task[Any]] = set()
        self._relays: weakref.WeakKeyDictionary[Any, LoopRelay] = weakref.WeakKeyDictionary()  # per caller loop
        loop = self._loop()

        async def bind() -> None:  # LMDeploy's engine loop runs on our private loop thread from now on
            self._engine.start_loop(asyncio.get_running_loop(), use_async_api=True)

        loop.submit(bind()).result()

    @staticmethod
    def _load_tokenizer(model: ModelSettings) -> tuple[Any, dict[str, Any]]:
        from transformers import AutoTokenizer, GenerationConfig

        tokenizer = AutoTokenizer.from_pretrained(
            model.model, revision=model.model_revision, trust_remote_code=model.trust_remote_code
        )
        assert model.model is not None  # narrows for mypy: LMDeploy's engine was built from it above
        try:
            generation_config = GenerationConfig.from_pretrained(
                model.model,
                revision=model.model_revision,  # type: ignore[arg-type]  # transformers reads None as the default branch
            )
        except OSError:
            generation_config = None
        return tokenizer, model_sampling_defaults(generation_config)

    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapters)

    @property
    def num_running(self) -> int:
        return self._running

    @property
    def num_waiting(self) -> int:
        return 0

    def _adapter_name(self, adapter_request: AdapterRequest | None) -> str | None:
        if adapter_request is None or adapter_request.name == self.model_name:
            return self._default_adapter
        if adapter_request.name not in self._adapters:
            raise ModelNotFoundError(
                f"adapter {adapter_request.name!r} is not loaded; LMDeploy loads adapters at "
                f"start only (--adapters name=path); this engine serves {', '.join(self.models)}"
            )
        return adapter_request.name

    def _prompt(self, request: InferRequest) -> tuple[dict[str, Any], int]:
        """preprocess() arguments and the prompt length (for media: the text tokens only; LMDeploy checks the rest)."""
        if not has_media(request):
            ids = encode_prompt(self.tokenizer, request, self.generation.system)
            return {"messages": None, "input_ids": ids, "do_preprocess": False}, len(ids)
        messages, media = split_media(request)
        for kind in set(media) - {"image"}:
            require("lmdeploy", f"{kind}_input")
        images = iter(media.get("image", []))
        for message in messages:
            if isinstance(message.get("content"), list):
                message["content"] = [
                    {"type": "image_url", "image_url": {"url": _data_uri(load_image(next(images), self.media_policy))}}
                    if part.get("type") == "image"
                    else part
                    for part in message["content"]
                ]
        if self.generation.system and messages[0].get("role") != "system":
            messages.insert(0, {"role": "system", "content": self.generation.system})
        text_len = sum(
            len(self.tokenizer(p.get("text", ""))["input_ids"])
            for m in messages
            for p in (m["content"] if isinstance(m.get("content"), list) else [{"text": m.get("content")}])
            if isinstance(p.get("text"), str)
        )
        return {"messages": messages, "do_preprocess": True}, text_len

    def _start(
        self, request: InferRequest, config: RequestConfig, adapter_request: AdapterRequest | None
    ) -> tuple[AsyncIterator[SequenceOutput], bool]:
        """The request's outputs (generation starts as they are read) and whether they carry logprobs."""
        adapter_name = self._adapter_name(adapter_request)
        prompt, prompt_len = self._prompt(request)
        if prompt_len or prompt.get("input_ids") is not None:  # messages LMDeploy templates itself: no count
            check_prompt_length(prompt_len, self.max_model_len)
        constraint = output_constraint(config, request)
        config = effective_config(config, self.generation, self._model_defaults)
        check_logit_token_ids(config, len(self.tokenizer))
        mapped = lm_args.map_request(config, prompt_len, self.max_model_len, constraint, self.lmdeploy_backend)
        every_step = config.stream or bool(mapped.stops)
        outputs = self._generate(prompt, mapped.choices, mapped.stops, mapped.top_logprobs, adapter_name, every_step)
        return outputs, mapped.top_logprobs is not None

    def _relay(self) -> LoopRelay:
        loop = asyncio.get_running_loop()
        relay = self._relays.get(loop)
        if relay is None:
            relay = self._relays[loop] = LoopRelay(loop)
        return relay

    async def _generate(
        self,
        prompt: dict[str, Any],
        choices: list[dict[str, Any]],
        stops: list[str],
        top: int | None,
        adapter_name: str | None,
        every_step: bool,
    ) -> AsyncIterator[SequenceOutput]:
        """All choices' outputs, relayed from the engine's loop thread; leaving early cancels the sessions.
        Without `every_step` (a whole answer, no stop string to watch) LMDeploy hands over the tokens at the end."""
        queue = OutputChannel(asyncio.get_running_loop())
        relay = self._relay()
        prompt_ids = prompt.get("input_ids") or []
        futures = []
        for i, kwargs in enumerate(choices):
            tracker = ChoiceTracker(i, self.tokenizer, prompt_ids, stops, top)
            futures.append(
                self._loop().submit(self._run_choice(prompt, kwargs, adapter_name, tracker, relay, queue, every_step))
            )
        remaining = len(choices)
        try:
            while remaining:
                out = await queue.get()
                if out.finish_reason is not None:
                    remaining -= 1
                yield out
        finally:
            for future in futures:
                future.cancel()  # on the engine loop: CancelledError in LMDeploy's generate -> async_cancel

    async def _run_choice(
        self,
        prompt: dict[str, Any],
        gen_kwargs: dict[str, Any],
        adapter_name: str | None,
        tracker: ChoiceTracker,
        relay: LoopRelay,
        queue: OutputChannel,
        every_step: bool,
    ) -> None:
        self._running += 1
        task = asyncio.current_task()
        assert task is not None  # narrows for mypy: a coroutine awaited on a loop runs inside a task
        self._choice_tasks.add(task)
        stream: Any = None  # instance_steps' or generate's async generator
        last: SequenceOutput | None = None  # held until the session is closed (a stop string ended it)
        try:
            gen_config = self._lmdeploy.GenerationConfig(**gen_kwargs)
            session_id = next(_session_ids)
            # A structured output keeps generate: preprocess checks LMDeploy can compile the format first.
            if (
                self._token_ids_to_instance
                and prompt.get("input_ids") is not None
                and "response_format" not in gen_kwargs
            ):
                stream = instance_steps(
                    self._engine, session_id, prompt["input_ids"], gen_config, adapter_name, every_step
                )
            else:
                request = await self._engine.preprocess(
                    session_id=session_id, gen_config=gen_config, adapter_name=adapter_name, **prompt
                )
                stream = self._engine.generate(request, stream_response=every_step)
            async for out in stream:
                if tracker.finished:
                    continue  # let LMDeploy end the session itself after its last output
                converted = tracker.feed(out) if isinstance(out, TokenStep) else tracker.convert(out)
                if tracker.stopped_by_string:
                    last = converted
                    break  # LMDeploy would go on; closing the stream below cancels its session
                if converted.text or converted.finish_reason is not None or converted.logprobs:
                    relay.push(queue, converted)
            if not tracker.finished:
                raise EngineError("LMDeploy ended a generation without a finish reason")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc if isinstance(exc, SwiftopsError) else library_error(exc)
            relay.push(queue, SequenceOutput(index=tracker.index, finish_reason="error", error=error))
        finally:
            self._running -= 1
            self._choice_tasks.discard(task)
            if stream is not None:
                await stream.aclose()  # no-op when exhausted; after a stop string, LMDeploy cancels the session
            if last is not None:
                relay.push(queue, last)

    def close(self) -> None:
        """Cancel the generations still running and let their cleanup finish on the engine's loop, close LMDeploy,
        then stop the loop. Left to the interpreter's exit, a pending choice was finalized without a running
        loop: its `await stream.aclose()` printed "RuntimeError: coroutine ignored GeneratorExit"."""
        engine = getattr(self, "_engine", None)
        if engine is None:
            return
        loop_thread = self._loop_thread
        if loop_thread is not None and loop_thread.thread.is_alive():
            self._on_loop(loop_thread, self._cancel_tasks(list(self._choice_tasks)))
        engine.close()
        self._engine = None
        if loop_thread is not None and loop_thread.thread.is_alive():
            self._on_loop(loop_thread, self._cancel_tasks(None))  # whatever LMDeploy left behind
            self._on_loop(loop_thread, loop_thread.loop.shutdown_asyncgens())
            loop_thread.loop.call_soon_threadsafe(loop_thread.loop.stop)
            loop_thread.thread.join(timeout=10)
            if not loop_thread.thread.is_alive():
                loop_thread.loop.close()
            self._loop_thread = None

    @staticmethod
    def _on_loop(loop_thread: Any, coro: Any) -> None:
        try:
            loop_thread.submit(coro).result(timeout=30)
        except Exception as exc:
            logger.warning("lmdeploy engine: cleanup at close did not finish: %s: %s", type(exc).__name__, exc)

    @staticmethod
    async def _cancel_tasks(tasks: list[asyncio.Task[Any]] | None) -> None:
        """Cancel `tasks` (None: every task on this loop but the caller) and wait for them to end."""
        current = asyncio.current_task()
        if tasks is None:
            tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
