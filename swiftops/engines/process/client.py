"""`EngineProcessClient`: the `InferEngine` interface in the API-server process, for a pt engine that runs in its
own process (swiftops.engines.process.engine_main), as vLLM's API server and EngineCore are split.

Here: tokenization (the chat template), incremental detokenization and stop strings (`TokenDecoder`), and the
server's per-request bookkeeping. There: scheduling, the model, the GPU. Between them two ZeroMQ sockets on
a private directory: requests go as token ids once, and each engine step comes back as one message holding
every sequence's new token ids. One receiver thread reads them and wakes each event loop once per step.

A dead engine process fails every request in flight with a 500 and makes `health_error()` say so (the server's
/health then fails and it exits non-zero); it never leaves a request hanging.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from swiftops.engines.base import InferEngine
from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.process import engine_main
from swiftops.engines.process.messages import (
    Abort,
    Delta,
    ErrorInfo,
    Failed,
    FromEngine,
    LoadFailed,
    Ready,
    Shutdown,
    Steps,
    Submit,
    Whole,
)
from swiftops.engines.prompt_checks import check_prompt_length, check_streamable, check_text_only
from swiftops.engines.response_builder import collect_response, stream_response
from swiftops.engines.token_decoder import TokenDecoder
from swiftops.protocol import (
    AdapterRequest,
    ChatCompletionResponse,
    EngineError,
    InferRequest,
    RequestConfig,
    SwiftopsError,
)
from swiftops.protocol import errors as error_classes
from swiftops.protocol.sampling import stop_strings, wants_logprobs
from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings

logger = logging.getLogger("swiftops.engine_process")
_SHUTDOWN_WAIT = 30.0


def as_error(info: ErrorInfo) -> SwiftopsError:
    """The SwiftopsError an ErrorInfo stands for (same class, so the same HTTP status)."""
    cls = getattr(error_classes, info.kind, None)
    if not (isinstance(cls, type) and issubclass(cls, SwiftopsError)):
        cls = EngineError
    error = cls.__new__(cls)
    SwiftopsError.__init__(error, info.message, param=info.param, code=info.code)
    return error


def runs_in_engine_process(model: ModelSettings, engine: EngineSettings) -> bool:
    """Served from an engine process: pt text-generation models. Embedding and scoring models answer whole
    responses (no per-token work to move), vLLM and LMDeploy run their engines outside the server's GIL
    already, and multimodal models keep media processing beside the processor's tensors, in one process."""
    if engine.infer_backend != "pt":
        return False
    try:
        from swiftops.engines.gguf_source import gguf_source
        from swiftops.engines.model_source import apply_adapter_args
        from swiftops.engines.pt.task import model_task
        from swiftops.template.processor_loader import is_multimodal_model

        model, _ = apply_adapter_args(model)
        if gguf_source(model.model, model.gguf_file) is not None:
            return model.task_type in (None, "causal_lm")
        if model_task(model.model or "", model.task_type) != "causal_lm":
            return False
        return not is_multimodal_model(
            model.model or "", trust_remote_code=model.trust_remote_code, revision=model.model_revision
        )
    except Exception:
        return False


def requests_address(directory: str, index: int) -> str:
    return f"ipc://{directory}/requests-{index}"


def outputs_address(directory: str, index: int) -> str:
    return f"ipc://{directory}/outputs-{index}"


@dataclass
class ApiServerSlot:
    """How a further API-server process reaches the engine process of the first: its index among `count`
    API servers, the IPC directory, the engine's pid and the generation defaults (JSON)."""

    index: int
    count: int
    directory: str
    engine_pid: int
    generation: str


class _EngineByPid:
    """The engine process seen from an API server that did not start it: alive while its pid is and is no
    zombie (its parent, the first API server, reaps it only when it notices)."""

    exitcode = None

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def is_alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
            return state not in (b"Z", b"X")
        except FileNotFoundError:
            return False
        except OSError:  # no /proc (not Linux): whether the pid exists at all
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True

    def join(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        while self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)


class _Stream:
    """One request's deltas on the event loop awaiting them; what piled up while its reader was busy is taken at
    once (and merged per choice), so a slow reader gets fewer, larger chunks instead of a growing queue."""

    __slots__ = ("loop", "pending", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[Any] = []
        self.waiter: asyncio.Future[None] | None = None

    def push(self, item: Any) -> None:
        self.pending.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def take(self) -> list[Any]:
        while not self.pending:
            self.waiter = self.loop.create_future()
            await self.waiter
        items, self.pending = self.pending, []
        return items


def _push_all(items: list[tuple[_Stream, Any]]) -> None:
    for stream, item in items:
        stream.push(item)


class EngineProcessClient(InferEngine):
    """The pt engine in a process of its own, behind the same interface as `PtEngine`."""

    # Known once the model is loaded (the interface allows None for backends that do not know them).
    max_model_len: int
    max_batch_size: int
    _process: multiprocessing.process.BaseProcess | _EngineByPid

    def __init__(
        self,
        model: ModelSettings,
        engine: EngineSettings,
        generation: GenerationSettings | None = None,
        media: MediaSettings | None = None,
        api_server_count: int = 1,
    ) -> None:
        from swiftops.engines.factory import check_model_location

        check_model_location(model)  # a missing path fails now, before a process starts
        if api_server_count < 1:
            raise ValueError("api_server_count must be at least 1")
        directory = tempfile.mkdtemp(prefix="swiftops-ipc-")
        if len(directory) > 80 and os.path.isdir("/tmp"):  # a Unix socket path holds at most ~107 bytes
            shutil.rmtree(directory, ignore_errors=True)
            directory = tempfile.mkdtemp(prefix="swiftops-ipc-", dir="/tmp")
        self._open(generation or GenerationSettings(), directory, 0, api_server_count)
        spec = engine_main.EngineSpec(
            settings={
                "model": model.model_dump_json(),
                "engine": engine.model_dump_json(),
                "generation": self.generation.model_dump_json(),
                "media": (media or MediaSettings()).model_dump_json(),
            },
            requests_addresses=[requests_address(directory, i) for i in range(api_server_count)],
            outputs_addresses=[outputs_address(directory, i) for i in range(api_server_count)],
            parent_pid=os.getpid(),
        )
        # spawn: a fresh interpreter (CUDA cannot be forked once initialized, and the server's threads would be)
        self._process = multiprocessing.get_context("spawn").Process(
            target=engine_main.run, args=(spec,), name="swiftops-engine"
        )
        self._process.start()
        self._start()

    @classmethod
    def attach(cls, slot: ApiServerSlot) -> EngineProcessClient:
        """The client of a further API-server process (`--api_server_count`): the engine process is the first
        API server's; this one has its own sockets to it and watches it by pid."""
        client = cls.__new__(cls)
        client._open(GenerationSettings.model_validate_json(slot.generation), slot.directory, slot.index, slot.count)
        client._process = _EngineByPid(slot.engine_pid)
        client._start()
        return client

    def slot(self, index: int) -> ApiServerSlot:
        """What API-server process `index` (1 .. api_server_count - 1) needs to attach to this engine."""
        return ApiServerSlot(index, self._count, self._dir, self._process.pid or 0, self.generation.model_dump_json())

    def _open(self, generation: GenerationSettings, directory: str, index: int, count: int) -> None:
        """This API server's state and its two sockets: requests out, the engine's steps in."""
        self.generation = generation
        self.failure: str | None = None
        self._closing = False
        self._death_callbacks: list[Callable[[str], object]] = []
        self._streams: dict[int, _Stream] = {}
        # Request ids of API server `index` are index + k * count: the engine routes their outputs by rid % count.
        self._rids = itertools.count(index + count, count)
        self._index, self._count, self._dir = index, count, directory
        self.ipc_dir = directory  # private (0700): the API servers' shared state lives here too
        self._send_lock = threading.Lock()
        self._running = self._waiting = 0
        self._prefix_cache: tuple[int, int] | None = None  # the engine process's counters, as last reported
        self._context = zmq.Context()
        self._request_socket = self._context.socket(zmq.PUSH)
        self._request_socket.setsockopt(zmq.LINGER, 0)
        self._request_socket.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a burst of submits
        self._request_socket.bind(requests_address(directory, index))
        self._output_socket = self._context.socket(zmq.PULL)
        self._output_socket.setsockopt(zmq.RCVHWM, 0)
        self._output_socket.bind(outputs_address(directory, index))
        self._decoder = msgspec.msgpack.Decoder(FromEngine)
        self._encoder = msgspec.msgpack.Encoder()

    def _start(self) -> None:
        """Wait for the loaded engine's Ready, then start reading its steps."""
        try:
            info = self._await_ready()
        except BaseException:
            self._stop_process(graceful=False)
            self._release_sockets()
            raise
        self.model_name = info.model_name
        self.max_model_len = info.max_model_len
        self.max_batch_size = info.max_batch_size
        self.tokenizer = info.tokenizer
        self.default_adapter = info.default_adapter
        self.runner_name = info.runner_name
        self._adapter_names = list(info.adapter_names)
        self._receiver = threading.Thread(target=self._receive, name="swiftops-engine-receiver", daemon=True)
        self._receiver.start()
        logger.info("engine process %d ready: %s (runner=%s)", self._process.pid, self.model_name, self.runner_name)

    # ---- start-up ------------------------------------------------------------------------------------
    def _await_ready(self) -> engine_main.EngineInfo:
        while True:
            if self._output_socket.poll(500):
                message = self._decoder.decode(self._output_socket.recv())
                if isinstance(message, Ready):
                    return pickle.loads(message.info)
                if isinstance(message, LoadFailed):
                    self._process.join(timeout=10)
                    raise as_error(message.error)
            elif not self._process.is_alive():
                raise EngineError(
                    f"the engine process exited with status {self._process.exitcode} while loading "
                    f"the model; see the log above"
                )

    # ---- what the server reads ------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self._adapter_names)

    @property
    def num_running(self) -> int:
        return self._running

    @property
    def num_waiting(self) -> int:
        return self._waiting

    def prefix_cache_stats(self) -> tuple[int, int] | None:
        return self._prefix_cache

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def health_error(self) -> str | None:
        return self.failure

    def on_death(self, callback: Callable[[str], object]) -> None:
        """`callback(reason)` runs (on the receiver thread) once the engine process is found dead."""
        self._death_callbacks.append(callback)
        if self.failure is not None:
            callback(self.failure)

    # ---- the receiver thread ----------------------------------------------------------------------------
    def _receive(self) -> None:
        checked = time.monotonic()
        # A blocking receive with a timeout (not poll, then receive): one call into ZeroMQ per engine step.
        self._output_socket.setsockopt(zmq.RCVTIMEO, 200)
        while not self._closing:
            try:
                self._dispatch(self._decoder.decode(self._output_socket.recv()))
                ready = True
            except zmq.Again:
                ready = False
            except zmq.ZMQError:
                return  # closed
            now = time.monotonic()
            if not ready or now - checked > 0.5:
                checked = now
                if not self._process.is_alive() and not self._closing:
                    code = self._process.exitcode  # None where another API server is its parent
                    status = f" (status {code})" if code is not None else ""
                    self._engine_died(f"the engine process exited unexpectedly{status}")
                    return

    def _dispatch(self, message: FromEngine) -> None:
        by_loop: dict[Any, list[tuple[_Stream, Any]]] = {}
        if isinstance(message, Steps):
            self._running, self._waiting = message.running, message.waiting
            if message.prefix_cache is not None:
                self._prefix_cache = (message.prefix_cache[0], message.prefix_cache[1])
            streams = self._streams
            for delta in message.deltas:
                stream = streams.get(delta.rid)
                if stream is not None:
                    by_loop.setdefault(stream.loop, []).append((stream, delta))
        elif isinstance(message, (Failed, Whole)):
            stream = self._streams.get(message.rid)
            if stream is not None:
                by_loop[stream.loop] = [(stream, message)]
        for loop, items in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_push_all, items)  # one wake-up per loop and step

    def _engine_died(self, reason: str) -> None:
        logger.error("%s: failing the requests in flight", reason)
        self.failure = reason
        for callback in self._death_callbacks:  # first: /health fails before any request sees the error
            callback(reason)
        error = Failed(0, ErrorInfo("EngineError", f"{reason}; the server is restarting"))
        by_loop: dict[Any, list[tuple[_Stream, Any]]] = {}
        for stream in list(self._streams.values()):
            by_loop.setdefault(stream.loop, []).append((stream, error))
        for loop, items in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_push_all, items)

    # ---- requests ---------------------------------------------------------------------------------------
    def _send(self, message: Any) -> None:
        if self.failure is not None:
            raise EngineError(f"{self.failure}; the server is restarting")
        with self._send_lock:
            self._request_socket.send(self._encoder.encode(message), copy=False)

    def _abort(self, rid: int, index: int = -1) -> None:
        if self.failure is None and not self._closing:
            self._send(Abort(rid, index))

    def _adapter(self, adapter_request: AdapterRequest | None) -> tuple[str | None, str | None]:
        if adapter_request is None or adapter_request.name == self.model_name:
            return None, None  # the engine applies its default adapter, if any
        if adapter_request.path and adapter_request.name not in self._adapter_names:
            self._adapter_names.append(adapter_request.name)  # loaded by path on first use, then listed
        return adapter_request.name, adapter_request.path

    async def _submit(
        self,
        request: InferRequest,
        config: RequestConfig,
        adapter_request: AdapterRequest | None,
        prompt_ids: list[int] | None,
        every_step: bool,
        whole: bool = False,
    ) -> tuple[int, _Stream]:
        if self.failure is not None or self._closing:
            raise EngineError(f"{self.failure or 'the engine is shutting down'}; send the request again later")
        adapter, path = self._adapter(adapter_request)
        rid = next(self._rids)
        stream = _Stream(asyncio.get_running_loop())
        self._streams[rid] = stream
        # The request itself only where the engine needs more than its token ids: beams, and tools (a forced
        # tool call is an output constraint the engine enforces).
        body = request.model_dump_json().encode() if whole or request.tools else None
        try:
            self._send(
                Submit(
                    rid,
                    config.model_dump_json(exclude_defaults=True).encode(),
                    prompt_ids,
                    body,
                    whole,
                    adapter,
                    path,
                    every_step,
                )
            )
        except BaseException:
            self._streams.pop(rid, None)
            raise
        return rid, stream

    async def _prompt_ids(self, request: InferRequest) -> list[int]:
        from swiftops.media.worker_pools import tokenize_off_loop
        from swiftops.template.chat_template import encode_prompt

        check_text_only(request)
        # Off the event loop: a chat template over a megabyte prompt takes seconds.
        ids = await tokenize_off_loop(request, encode_prompt, self.tokenizer, request, self.generation.system)
        check_prompt_length(len(ids), self.max_model_len)
        return ids

    def _stops(self, config: RequestConfig) -> tuple[str, ...]:
        return tuple(stop_strings(config, self.generation))

    def _wants_logprobs(self, config: RequestConfig) -> bool:
        return wants_logprobs(config, self.generation)

    async def generate(
        self, request: InferRequest, config: RequestConfig, *, adapter_request: AdapterRequest | None = None
    ) -> AsyncIterator[SequenceOutput]:
        check_streamable(config)
        prompt_ids = await self._prompt_ids(request)
        stops = self._stops(config)
        rid, stream = await self._submit(
            request, config, adapter_request, prompt_ids, every_step=config.stream or bool(stops)
        )
        want = self._wants_logprobs(config)
        decoders = [TokenDecoder(self.tokenizer, prompt_ids, i, stops, want) for i in range(config.n)]
        return self._outputs(rid, stream, decoders)

    async def _outputs(self, rid: int, stream: _Stream, decoders: list[TokenDecoder]) -> AsyncIterator[SequenceOutput]:
        remaining = len(decoders)
        try:
            while remaining:
                for item in self._merged(await stream.take()):
                    if isinstance(item, Failed):
                        raise as_error(item.error)
                    decoder = decoders[item.index]
                    if decoder.finished:
                        continue
                    if item.error is not None:
                        raise as_error(item.error)
                    out = decoder.feed(item.token_ids, item.finish_reason, item.prompt_tokens, item.logprobs)
                    if out.finish_reason is not None:
                        remaining -= 1
                        if item.finish_reason is None:  # a stop string: the engine does not know it ended
                            self._abort(rid, item.index)
                    yield out
        finally:
            self._streams.pop(rid, None)
            if remaining:
                self._abort(rid)  # the reader left (a client gone, an error): free the engine's slots now

    @staticmethod
    def _merged(items: list[Any]) -> list[Any]:
        """Consecutive deltas of one choice as one (a reader that fell behind): fewer, larger chunks."""
        if len(items) < 2:
            return items
        merged: list[Any] = []
        last: dict[int, int] = {}  # choice -> its delta's position in `merged`
        for item in items:
            if isinstance(item, Delta) and item.index in last and item.error is None:
                previous = merged[last[item.index]]
                if previous.finish_reason is None and previous.error is None:
                    logprobs = (
                        (previous.logprobs or []) + (item.logprobs or [])
                        if previous.logprobs is not None or item.logprobs is not None
                        else None
                    )
                    merged[last[item.index]] = Delta(
                        item.rid,
                        item.index,
                        previous.token_ids + item.token_ids,
                        item.finish_reason,
                        item.prompt_tokens,
                        item.completion_tokens,
                        logprobs,
                    )
                    continue
            if isinstance(item, Delta):
                last[item.index] = len(merged)
            merged.append(item)
        return merged

    async def infer_async(
        self,
        request: InferRequest,
        request_config: RequestConfig | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
    ):
        config = request_config or RequestConfig()
        name = adapter_request.name if adapter_request is not None else self.model_name
        if config.num_beams > 1 and not config.stream:
            return await self._whole(request, config, adapter_request)
        outputs = await self.generate(request, config, adapter_request=adapter_request)
        tools = bool(request.tools) and request.tool_choice != "none"
        if config.stream:
            return stream_response(outputs, config.n, name, tools, self._wants_logprobs(config))
        return await collect_response(outputs, config.n, name, tools, self._wants_logprobs(config))

    async def _whole(
        self, request: InferRequest, config: RequestConfig, adapter_request: AdapterRequest | None
    ) -> ChatCompletionResponse:
        """Beam search runs whole in the engine process (transformers' generate beside the batch)."""
        rid, stream = await self._submit(request, config, adapter_request, None, every_step=False, whole=True)
        try:
            (item,) = await stream.take()
        finally:
            self._streams.pop(rid, None)
        if isinstance(item, Failed):
            raise as_error(item.error)
        return ChatCompletionResponse.model_validate_json(item.response)

    # ---- shutdown ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the engine process (it finishes nothing more: the server drained before calling this)."""
        if self._closing:
            return
        self._closing = True
        self._stop_process(graceful=self.failure is None)
        receiver = getattr(self, "_receiver", None)
        if receiver is not None:
            receiver.join(timeout=5)
        self._release_sockets()

    def _stop_process(self, graceful: bool) -> None:
        process = self._process
        if isinstance(process, _EngineByPid):
            return  # the first API server's engine: it stops it after every API server drained
        if graceful and process.is_alive():
            try:
                with self._send_lock:
                    self._request_socket.send(self._encoder.encode(Shutdown()))
            except zmq.ZMQError:
                pass
            process.join(timeout=_SHUTDOWN_WAIT)
        if process.is_alive():  # it ignores SIGTERM (the server drains first): end it for good
            process.kill()
            process.join(timeout=5)

    def _release_sockets(self) -> None:
        self._request_socket.close(linger=0)
        self._output_socket.close(linger=0)
        self._context.term()
        if self._index == 0:
            shutil.rmtree(self._dir, ignore_errors=True)
