"""`InferEngine`: the one interface the CLI, the server and users program against.

Backends implement `infer_async` (plus, where they can, `embed_async`); the synchronous,
batched `infer` is built here once, on a private event loop, so every backend batches the same way:
all requests of a call are submitted at once and the backend's scheduler batches them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from swiftops.engines.outputs import SequenceOutput
from swiftops.metrics.stats import InferStats
from swiftops.protocol import (
    AdapterRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    InferRequest,
    RequestConfig,
    UnsupportedError,
)

if TYPE_CHECKING:
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings
    from swiftops.template.multimodal import MultimodalEncoder

InferResult = ChatCompletionResponse | AsyncIterator[ChatCompletionStreamResponse]
_END = object()


async def _outputs_of(stream: AsyncIterator[ChatCompletionStreamResponse]) -> AsyncIterator[SequenceOutput]:
    """OpenAI stream chunks back to per-choice outputs (backends that only stream chunks, such as InferClient)."""
    counts: dict[int, int] = {}
    try:
        async for chunk in stream:
            usage = chunk.usage
            for choice in chunk.choices:
                entries = choice.logprobs.content if choice.logprobs is not None else None
                counts[choice.index] = counts.get(choice.index, 0) + (1 if choice.delta.content else 0)
                yield SequenceOutput(
                    index=choice.index,
                    text=choice.delta.content or "",
                    logprobs=list(entries or []),
                    finish_reason=choice.finish_reason,
                    prompt_tokens=usage.prompt_tokens if usage is not None else 0,
                    completion_tokens=usage.completion_tokens if usage is not None else counts[choice.index],
                )
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _LoopThread:
    """An asyncio loop on a daemon thread, so synchronous callers can drive async engines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="swiftops-engine-loop", daemon=True)
        self.thread.start()

    def submit(self, coro) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


class InferEngine(ABC):
    """Base of `PtEngine`, `VllmEngine`, `LmdeployEngine` and `InferClient`.

    The facts below are all the server, the CLI and the dataset runner read from an engine; each backend sets
    those it knows and keeps these defaults for the rest (InferClient, for one, has no tokenizer)."""

    #: Name put in responses' `model` field when the caller does not name one.
    model_name: str = "model"
    #: What the model does (ModelSettings.task_type's values): the dataset runner scores whole rows for
    #: "seq_cls", "reward" and "prm".
    task_type: str = "causal_lm"
    #: The model's tokenizer, or None where the backend does not expose one (the server then skips the checks
    #: and counts that need it: vocabulary range of token-id prompts, characters per token, embedding usage).
    tokenizer: Any = None
    #: Context length in tokens (prompt + output), or None where unknown.
    max_model_len: int | None = None
    #: Most sequences generated at once, or None where the backend does not say (the server then admits 64).
    max_batch_size: int | None = None
    #: A multimodal model's media encoder (processor and media limits), which sizes a request's media budget.
    encoder: MultimodalEncoder | None = None
    _loop_thread: _LoopThread | None = None

    # ---- what backends implement -------------------------------------------------------------
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
    ) -> InferEngine:
        """The engine the settings models describe: how `swiftops.engines.factory.build_engine` builds every backend.
        Only InferClient keeps this refusal: it runs no model and connects to a server instead."""
        raise TypeError(f"{cls.__name__} runs no model and is not built from settings; give it a server's address")

    @abstractmethod
    async def infer_async(
        self,
        request: InferRequest,
        request_config: RequestConfig | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
    ) -> InferResult:
        """Answer one request: a response, or (with `stream=True`) an async iterator of chunks."""

    async def generate(
        self, request: InferRequest, config: RequestConfig, *, adapter_request: AdapterRequest | None = None
    ) -> AsyncIterator[SequenceOutput]:
        """The request's per-choice outputs as they come (text deltas, token ids, logprob entries, a finish reason
        and token counts on each), for the server's chunk shapers: a stream without OpenAI's chunk objects.
        Errors of the request itself raise here or at the first output. This default reads `infer_async`'s
        chunks; the token-by-token backends hand over their outputs directly."""
        stream = await self.infer_async(
            request, config.model_copy(update={"stream": True}), adapter_request=adapter_request
        )
        assert not isinstance(stream, ChatCompletionResponse)  # narrows for mypy: stream=True answers chunks
        return _outputs_of(stream)

    def health_error(self) -> str | None:
        """Why the engine can serve no more (its process died), or None while it can: /health reports it."""
        return None

    def on_death(self, callback: Callable[[str], object]) -> None:
        """`callback(reason)` runs once the engine can serve no more (an engine in its own process that died)."""
        del callback  # an in-process engine dies with the server: nothing to watch

    @property
    def num_running(self) -> int:
        """Sequences generating now (the server's /metrics); 0 where the backend does not count them."""
        return 0

    @property
    def num_waiting(self) -> int:
        """Sequences queued in the engine, not yet generating (/metrics); 0 where not counted."""
        return 0

    async def embed_async(self, inputs: list[Any]) -> list[list[float]]:
        """Embeddings of texts (embedding models only)."""
        raise UnsupportedError(
            "this model is not an embedding model; /v1/embeddings needs one (e.g. a sentence-transformers checkpoint)"
        )

    @property
    def adapter_names(self) -> list[str]:
        """Names of the LoRA adapters a request may select."""
        return []

    def prefix_cache_stats(self) -> tuple[int, int] | None:
        """(queried, hit) prompt tokens of the prefix cache since the engine started; None where not counted."""
        return None

    @property
    def models(self) -> list[str]:
        return [self.model_name, *self.adapter_names]

    # ---- ms-swift's template object (swiftops.template.template) -------------------------------
    @property
    def processor(self) -> Any:
        """The tokenizer, or a multimodal model's processor (what ms-swift's `get_template` takes)."""
        return self.tokenizer

    @property
    def default_template(self) -> Any:
        """ms-swift 3.x's name: the engine's template (default system prompt, chat template, agent keywords)."""
        template = self.__dict__.get("_default_template")
        if template is None:
            from swiftops.template.template import Template

            generation = getattr(self, "generation", None)  # the generating engines' defaults; not every engine's
            template = Template(processor=self.processor, default_system=getattr(generation, "system", None))
            self._default_template = template
        return template

    @default_template.setter
    def default_template(self, template: Any) -> None:
        """Later requests get its default system prompt (when they have no system turn) and its chat template."""
        generation = getattr(self, "generation", None)
        if generation is not None:
            self.generation = generation.model_copy(update={"system": template.default_system})
        if self.encoder is not None:
            self.encoder.default_system = template.default_system
        if template.chat_template:
            for holder in {id(h): h for h in (self.tokenizer, self.processor) if h is not None}.values():
                holder.chat_template = template.chat_template
        self._default_template = template

    # ms-swift 4.x's name for the same object.
    template = default_template

    def close(self) -> None:  # noqa: B027 - optional hook: engines without threads or GPU memory have nothing to free
        """Release the engine's resources (threads, GPU memory)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the synchronous, batched API ---------------------------------------------------------
    def _loop(self) -> _LoopThread:
        if self._loop_thread is None:
            self._loop_thread = _LoopThread()
        return self._loop_thread

    async def _timed(
        self,
        request: InferRequest,
        config: RequestConfig,
        adapter_request: AdapterRequest | None,
        metrics: list[InferStats],
        key: str,
    ) -> ChatCompletionResponse:
        for m in metrics:
            m.start(key)
        response = await self.infer_async(request, config, adapter_request=adapter_request)
        assert isinstance(response, ChatCompletionResponse)  # narrows for mypy: the caller's config has stream off
        for m in metrics:
            m.finish(key, response.usage.prompt_tokens, response.usage.completion_tokens, len(response.choices))
        return response

    async def _pump_stream(
        self,
        request: InferRequest,
        config: RequestConfig,
        adapter_request: AdapterRequest | None,
        metrics: list[InferStats],
        key: str,
        sink: queue.Queue[Any],
    ) -> None:
        for m in metrics:
            m.start(key)
        try:
            stream = await self.infer_async(request, config, adapter_request=adapter_request)
            assert not isinstance(stream, ChatCompletionResponse)  # narrows for mypy: the config has stream on
            prompt_tokens = completion_tokens = 0
            async for chunk in stream:
                if any(c.delta.content or c.delta.tool_calls for c in chunk.choices):
                    for m in metrics:
                        m.first_token(key)
                if chunk.usage is not None:
                    prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                sink.put(chunk)
            for m in metrics:
                m.finish(key, prompt_tokens, completion_tokens, config.n)
            sink.put(_END)
        except BaseException as exc:  # handed to the consumer's thread, which re-raises it
            sink.put(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _sync_stream(
        self, sink: queue.Queue[Any], task: concurrent.futures.Future[Any]
    ) -> Iterator[ChatCompletionStreamResponse]:
        try:
            while True:
                item = sink.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            task.cancel()  # a consumer that stops early aborts the generation

    def infer(
        self,
        requests: list[InferRequest],
        request_config: RequestConfig | None = None,
        metrics: list[InferStats] | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
        use_tqdm: bool | None = None,
        return_exceptions: bool = False,
        template: Any = None,
    ) -> list[Any]:
        """Answer a batch of requests; one response (or, with `stream=True`, one chunk iterator) per request.

        With `return_exceptions=True` a failed request yields its exception in place of a response,
        so one bad row does not lose the rest of a batch. `template` (ms-swift's `get_template(...)`): its
        default system prompt goes to the requests that have none.
        """
        config = request_config or RequestConfig()
        if template is not None:
            if template.chat_template and template.chat_template != getattr(self.processor, "chat_template", None):
                raise UnsupportedError(
                    "a template with its own chat template applies to the whole engine: set "
                    "engine.default_template = template instead of passing it per call"
                )
            requests = [template.apply(r) for r in requests]
        metrics = list(metrics or [])
        for m in metrics:
            m.track_prefix_cache(self.prefix_cache_stats)
        loop = self._loop()
        if config.stream:
            streams = []
            for i, request in enumerate(requests):
                sink: queue.Queue[Any] = queue.Queue()
                task = loop.submit(
                    self._pump_stream(request, config, adapter_request, metrics, f"{id(sink)}-{i}", sink)
                )
                streams.append(self._sync_stream(sink, task))
            return streams
        futures = [
            loop.submit(self._timed(r, config, adapter_request, metrics, f"{id(requests)}-{i}"))
            for i, r in enumerate(requests)
        ]
        show = use_tqdm if use_tqdm is not None else len(requests) > 1
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=len(futures), desc="infer", dynamic_ncols=True)
        results: list[Any] = []
        try:
            for fut in futures:
                try:
                    results.append(fut.result())
                except Exception as exc:
                    if not return_exceptions:
                        raise
                    results.append(exc)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            for fut in futures:
                fut.cancel()
        return results
