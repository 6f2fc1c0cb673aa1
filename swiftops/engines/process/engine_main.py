"""The engine process: the pt engine (scheduler, model, GPU) and nothing else, started with `spawn` by
`EngineProcessClient` in the API-server process.

Three threads, each with its own ZeroMQ sockets: the main thread receives submits and aborts; the engine's
private event-loop thread prepares and launches requests (and runs beam searches); the engine-core thread
sends one `Steps` message per step, from `StepRelay`. With several API-server processes (`--api_server_count`)
each has its own pair of sockets: submits from all of them arrive on one inbox, and each step's deltas are split
by the API server that owns the request (request ids are numbered so that `rid % count` is that server).
SIGINT and SIGTERM are ignored here: the (first) API server decides when to stop (after every API server
drained) and says so with `Shutdown`. If it dies, so does this process (the parent watch below), so no orphan
holds the GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

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
    ToEngine,
    Whole,
)

logger = logging.getLogger("swiftops.engine_process")
_encoder = msgspec.msgpack.Encoder()


@dataclass
class EngineSpec:
    """What the child needs to build the engine (settings as JSON: the models re-validate them) and reach the server."""

    settings: dict[str, str]  # "model" | "engine" | "generation" | "media" -> the settings model's JSON
    requests_addresses: list[str]  # one per API-server process, in the order of their index
    outputs_addresses: list[str]
    parent_pid: int


@dataclass
class EngineInfo:
    """What the API server needs from the loaded engine (sent once, pickled)."""

    model_name: str
    max_model_len: int
    max_batch_size: int
    adapter_names: list[str]
    default_adapter: str | None
    tokenizer: Any
    runner_name: str


def error_info(exc: BaseException) -> ErrorInfo:
    from swiftops.protocol import SwiftopsError

    if isinstance(exc, SwiftopsError):
        return ErrorInfo(type(exc).__name__, exc.message, exc.param, exc.code)
    return ErrorInfo("EngineError", f"the engine failed: {type(exc).__name__}: {exc}")


class _Choice:
    """A launched sequence's bookkeeping for the relay (touched by the engine-core thread only)."""

    __slots__ = ("rid", "index", "every_step", "ids", "logprobs", "request")

    def __init__(self, rid: int, index: int, every_step: bool, request: _Request) -> None:
        self.rid, self.index, self.every_step, self.request = rid, index, every_step, request
        self.ids: list[int] = []
        self.logprobs: list[Any] = []


class _Request:
    __slots__ = ("seqs", "open")

    def __init__(self, n: int) -> None:
        self.seqs: list[Any] = []
        self.open = n


class StepRelay:
    """The engine core's per-step hand-over (it calls `call_soon_threadsafe(deliver_all, items)` once per step
    for AsyncSink sinks), turned into one `Steps` message on the engine-core thread's own socket."""

    def __init__(self, sockets: list[zmq.Socket], engine: Any, requests: dict[int, _Request]) -> None:
        self.sockets = sockets  # one per API server: request `rid` is answered on sockets[rid % len(sockets)]
        self.engine = engine
        self.requests = requests
        self.counts = (0, 0)  # (running, waiting) as last sent
        self.told = [(0, 0)] * len(sockets)  # the counts each API server last got from this relay

    def is_closed(self) -> bool:
        return False

    def call_soon_threadsafe(self, _deliver: Any, items: list[tuple[_Choice, Any]]) -> None:
        deltas = []
        for choice, out in items:
            if out.error is not None:
                delta = Delta(
                    choice.rid,
                    choice.index,
                    choice.ids + out.token_ids,
                    "error",
                    out.prompt_tokens,
                    out.completion_tokens,
                    error=error_info(out.error),
                )
            elif choice.every_step:
                delta = Delta(
                    choice.rid,
                    choice.index,
                    out.token_ids,
                    out.finish_reason,
                    out.prompt_tokens,
                    out.completion_tokens,
                    out.logprobs or None,
                )
            else:  # a whole answer is awaited: gather its tokens, send them once at the end
                choice.ids += out.token_ids
                choice.logprobs += out.logprobs
                if out.finish_reason is None:
                    continue
                delta = Delta(
                    choice.rid,
                    choice.index,
                    choice.ids,
                    out.finish_reason,
                    out.prompt_tokens,
                    out.completion_tokens,
                    choice.logprobs or None,
                )
            deltas.append(delta)
            if delta.finish_reason is not None:
                choice.request.open -= 1
                if not choice.request.open:
                    self.requests.pop(choice.rid, None)
        if not deltas:
            return
        self.counts = (self.engine.num_running, self.engine.num_waiting)
        prefix = prefix_cache_counts(self.engine)
        if len(self.sockets) == 1:
            self.sockets[0].send(_encoder.encode(Steps(deltas, *self.counts, prefix)), copy=False)
            return
        # Each API server gets its own requests' deltas (a blocking send: never a lost token) and, when it has none
        # this step, the counts for its /metrics only when they changed and without blocking: an API server that
        # has drained and exited reads nothing, and its queue must not fill and stop the engine core.
        shares: list[list[Delta]] = [[] for _ in self.sockets]
        for delta in deltas:
            shares[delta.rid % len(shares)].append(delta)
        for index, (socket, share) in enumerate(zip(self.sockets, shares, strict=True)):
            if share:
                socket.send(_encoder.encode(Steps(share, *self.counts, prefix)), copy=False)
                self.told[index] = self.counts
            elif self.told[index] != self.counts and send_if_room(
                socket, _encoder.encode(Steps([], *self.counts, prefix))
            ):
                self.told[index] = self.counts


def send_if_room(socket: zmq.Socket, data: bytes) -> bool:
    """Send an encoded message that may be dropped (counts for /metrics) unless the peer's queue is full."""
    try:
        socket.send(data, zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True


def prefix_cache_counts(engine: Any) -> list[int] | None:
    """The engine's prefix-cache counters as they cross to the server (its /metrics)."""
    stats = engine.prefix_cache_stats()
    return list(stats) if stats is not None else None


class EngineServer:
    """Takes `Submit`s and `Abort`s for one loaded PtEngine."""

    def __init__(self, engine: Any, context: zmq.Context, outputs_addresses: list[str]) -> None:
        from swiftops.engines.pt.sequence import AsyncSink

        self.engine = engine
        self.requests: dict[int, _Request] = {}
        self._sink_class = AsyncSink
        self.relay = StepRelay(connect_all(context, outputs_addresses), engine, self.requests)
        self.loop_sockets = connect_all(context, outputs_addresses)  # used on the engine's event-loop thread only
        self.loop = engine._loop()
        # Submitted but not launched yet (preparing on the loop), and which of those were aborted meanwhile.
        self._lock = threading.Lock()
        self._pending: set[int] = set()
        self._aborted: set[int] = set()

    def _send(self, rid: int, message: FromEngine) -> None:
        self.loop_sockets[rid % len(self.loop_sockets)].send(_encoder.encode(message), copy=False)

    def handle(self, message: ToEngine) -> None:
        """On the main thread: submits go to the engine's loop (preparing may await a pool), aborts act now."""
        if isinstance(message, Submit):
            with self._lock:
                self._pending.add(message.rid)
            self.loop.submit(self._start(message))
        elif isinstance(message, Abort):
            with self._lock:
                if message.rid in self._pending:  # not launched yet: it never will be
                    self._aborted.add(message.rid)
                    return
                request = self.requests.get(message.rid)
            if request is not None:
                seqs = [s for s in request.seqs if message.index < 0 or s.index == message.index]
                self.engine.abort(seqs)
                request.open -= len(seqs)
                if request.open <= 0:
                    self.requests.pop(message.rid, None)

    async def _start(self, submit: Submit) -> None:
        from swiftops.protocol import AdapterRequest, InferRequest, RequestConfig

        try:
            if submit.rid in self._aborted:
                raise _Gone()
            config = RequestConfig.model_validate_json(submit.config)
            adapter = AdapterRequest(name=submit.adapter, path=submit.adapter_path) if submit.adapter else None
            request = (
                InferRequest.model_validate_json(submit.request)
                if submit.request is not None
                else InferRequest(prompt=submit.prompt_ids)
            )
            if submit.whole:  # beam search: the in-process path, whole
                response = await self.engine.infer_async(request, config, adapter_request=adapter)
                self._forget(submit.rid)
                self._send(submit.rid, Whole(submit.rid, response.model_dump_json().encode()))
                return
            prepared = await self.engine.prepare(request, config, adapter, prompt_ids=submit.prompt_ids)
        except _Gone:
            self._forget(submit.rid)
            return
        except Exception as exc:
            self._forget(submit.rid)
            self._send(submit.rid, Failed(submit.rid, error_info(exc)))
            return
        prepared.params = dataclasses.replace(prepared.params, token_ids_only=True, incremental=False)
        tracked = _Request(prepared.n)
        sinks = [
            self._sink_class(self.relay, _Choice(submit.rid, i, submit.every_step, tracked)) for i in range(prepared.n)
        ]
        with self._lock:  # launched and registered at once: an abort sees either nothing or all of it
            self._pending.discard(submit.rid)
            if submit.rid in self._aborted:
                self._aborted.discard(submit.rid)
                return
            self.requests[submit.rid] = tracked
            tracked.seqs = self.engine.launch(prepared, sinks)

    def _forget(self, rid: int) -> None:
        with self._lock:
            self._pending.discard(rid)
            self._aborted.discard(rid)


def connect_all(context: zmq.Context, addresses: list[str]) -> list[zmq.Socket]:
    """A PUSH socket to each API server's outputs address."""
    sockets = []
    for address in addresses:
        socket = context.socket(zmq.PUSH)
        socket.connect(address)
        sockets.append(socket)
    return sockets


class _Gone(Exception):
    """The request was aborted before it was launched."""


def exit_with_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (SIGKILL included). Here: the first API server, without which nothing reads our
    outputs; also each further API server's watch on the first."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


def _build(spec: EngineSpec) -> Any:
    from swiftops.engines.factory import build_engine
    from swiftops.protocol.settings import EngineSettings, GenerationSettings, MediaSettings, ModelSettings

    model = ModelSettings.model_validate_json(spec.settings["model"])
    engine = EngineSettings.model_validate_json(spec.settings["engine"])
    generation = GenerationSettings.model_validate_json(spec.settings["generation"])
    media = MediaSettings.model_validate_json(spec.settings["media"])
    return build_engine(model, engine, generation, media, serving=True)


def _quiet_cpu_threads(engine: Any) -> None:
    """A GPU engine's host work is launching kernels and small tensors: one intra-op thread. torch's default
    (a thread per core) spins OpenMP workers after each parallel CPU op, taking the cores that the API server
    and its clients on the same host need (vLLM's workers do the same). OMP_NUM_THREADS, when set, wins."""
    if engine.device.type == "cuda" and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(1)


def run(spec: EngineSpec) -> None:
    """The engine process's entry point (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server drains first
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(
        target=exit_with_parent, args=(spec.parent_pid,), name="swiftops-parent-watch", daemon=True
    ).start()
    context = zmq.Context()
    inbox = context.socket(zmq.PULL)  # fair-queued over every API server's requests socket
    for address in spec.requests_addresses:
        inbox.connect(address)
    statuses = connect_all(context, spec.outputs_addresses)
    statuses[0].setsockopt(zmq.LINGER, 5000)  # a load failure reaches the first API server before we exit
    for status in statuses[1:]:
        status.setsockopt(zmq.LINGER, 0)  # the others start only once the engine is ready

    from swiftops.protocol import SwiftopsError

    try:
        engine = _build(spec)
    except BaseException as exc:
        if not isinstance(exc, SwiftopsError):
            logger.exception("the engine failed to load")
        statuses[0].send(_encoder.encode(LoadFailed(error_info(exc))))
        for status in statuses:
            status.close()
        context.term()
        sys.exit(2 if isinstance(exc, SwiftopsError) else 1)
    _quiet_cpu_threads(engine)
    server = EngineServer(engine, context, spec.outputs_addresses)
    info = EngineInfo(
        engine.model_name,
        engine.max_model_len,
        engine.max_batch_size,
        list(engine.adapter_names),
        engine.default_adapter,
        engine.tokenizer,
        engine.runner_name,
    )
    ready = _encoder.encode(Ready(pickle.dumps(info)))  # the tokenizer inside: pickled once for every API server
    for status in statuses:
        status.send(ready)
    decoder = msgspec.msgpack.Decoder(ToEngine)
    try:
        while True:
            if inbox.poll(100):
                message = decoder.decode(inbox.recv())
                if isinstance(message, Shutdown):
                    break
                server.handle(message)
            # Counts change without a step to report them too (an abort, a queued arrival): keep /metrics true.
            counts = (engine.num_running, engine.num_waiting)
            if counts != server.relay.counts:
                server.relay.counts = counts
                update = _encoder.encode(Steps([], *counts, prefix_cache_counts(engine)))
                for status in statuses:
                    send_if_room(status, update)
    finally:
        logger.info("engine process: shutting down")
        engine.close()
        context.destroy(linger=0)
