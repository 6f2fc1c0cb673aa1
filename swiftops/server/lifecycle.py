"""Readiness and shutdown.

Ready means: the model is loaded and one warm-up generation finished (the first generation compiles
kernels and allocates caches; a load balancer should not send traffic before it). SIGTERM drains:
/ready turns 503 at once, new requests are refused, in-flight ones finish for up to
`shutdown_timeout` seconds, then the process exits 0 (Kubernetes reads a non-zero exit as a crash).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from swiftops.engines.base import InferEngine
from swiftops.protocol import InferRequest, RequestConfig, SwiftopsError
from swiftops.protocol.settings import ServerSettings

logger = logging.getLogger("swiftops.server")
_FATAL_EXIT_SECONDS = 8.0  # after the engine died: within Kubernetes' patience and the 10 s we promise


def configure_logging(verbose: bool) -> None:
    """The server's log lines, each with its process id (several API-server processes share one log)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
    )
    logging.getLogger("swiftops.server.body").setLevel(logging.INFO if verbose else logging.WARNING)


class Lifecycle:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.warmup_error: str | None = None
        self.engine_failure: str | None = None  # the engine can serve no more (its process died)
        self.on_fatal: Callable[[], None] | None = None  # set by DrainingServer: exit now, non-zero
        self.on_drain: list[Callable[[], object]] = []  # run once when a signal starts the drain
        self._also_watched: list[Any] = []

    def watch(self, engine: InferEngine, loop: asyncio.AbstractEventLoop) -> None:
        """Follow an engine that can die apart from the server (its own process), and what `watch_also` added:
        on death, fail /health and /ready and stop the server at once (exit status 1), so Kubernetes restarts
        the pod."""

        def died(reason: str) -> None:  # on the source's thread
            if not loop.is_closed():  # after the server stopped, a late report has no one to tell
                loop.call_soon_threadsafe(self.engine_died, reason)

        for source in (engine, *self._also_watched):
            source.on_death(died)

    def watch_also(self, source: Any) -> None:
        """Another thing whose death ends the server (`source.on_death(callback)`): the other API servers."""
        self._also_watched.append(source)

    def engine_died(self, reason: str) -> None:
        self.engine_failure = reason
        self.draining = True
        logger.error("%s: /health now fails; exiting", reason)
        if self.on_fatal is not None:
            self.on_fatal()

    def not_ready_reason(self) -> str:
        if self.engine_failure:
            return self.engine_failure
        if self.draining:
            return "the server is shutting down"
        if self.warmup_error:
            return f"the warm-up generation failed ({self.warmup_error}); see the server log"
        return "the model is warming up; retry in a few seconds (poll GET /ready)"

    async def warm_up(self, engine: InferEngine) -> None:
        """One tiny generation, then ready. A chat turn first; a base model without a chat template gets a
        raw prompt, an embedding model an embedding; ready on the first that works."""
        one_token = RequestConfig(max_tokens=1, temperature=0)
        attempts = (
            lambda: engine.infer_async(InferRequest(messages=[{"role": "user", "content": "hi"}]), one_token),
            lambda: engine.infer_async(InferRequest(prompt="hi"), one_token),
            lambda: engine.embed_async(["hi"]),
        )
        errors: list[Exception] = []
        for attempt in attempts:
            try:
                await attempt()
            except asyncio.CancelledError:
                raise
            except SwiftopsError as exc:  # this model cannot do that kind of request: try the next kind
                errors.append(exc)
                continue
            except Exception as exc:  # stay unready: the probe keeps the pod out of the load balancer
                errors.append(exc)
                logger.exception("warm-up generation failed; /ready stays 503")
                break
            else:
                self.ready = True
                logger.info("warm-up done; ready")
                return
        first = errors[0]
        self.warmup_error = f"{type(first).__name__}: {first}"
        logger.error("warm-up failed (%s); /ready stays 503", self.warmup_error)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM marks the app draining and ends in exit status 0.

    uvicorn re-raises the signal after its graceful shutdown, which kills the process with
    status 143; a drained shutdown is a success.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        lifecycle.on_fatal = self._fatal

    def _fatal(self) -> None:
        """The engine died: stop without waiting for connections (their requests already failed), and make sure
        the process is gone within seconds whatever hangs on the way out."""
        self.should_exit = self.force_exit = True
        timer = threading.Timer(_FATAL_EXIT_SECONDS, os._exit, args=(1,))
        timer.daemon = True
        timer.start()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.lifecycle.draining:
            for callback in self.lifecycle.on_drain:  # the other API-server processes drain with this one
                callback()
        self.lifecycle.draining = True
        if sig == signal.SIGTERM and not self.should_exit:
            logger.info("SIGTERM: draining in-flight requests (up to %ss)", self.config.timeout_graceful_shutdown)
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def serve(app: Any, settings: ServerSettings, sock: socket.socket, processes: int = 1) -> Lifecycle:
    """Serve `app` (from create_app) on the bound `sock` until SIGTERM's drain ends or the engine dies; returns
    the app's lifecycle (its `engine_failure` says whether to exit non-zero). `processes`: API-server processes of
    the deployment, for the log."""
    ctx = app.state.ctx
    logger.info(
        "serving %s on http://%s:%d/v1 (models: %s; %d API-server process%s)",
        ctx.models.served_name,
        settings.host,
        settings.port,
        ", ".join(ctx.models.names),
        processes,
        "es" if processes > 1 else "",
    )
    from swiftops.server.http_guard import guarded_protocol

    # Keep-alive longer than clients' and load balancers' idle timeouts (httpx 5 s, AWS ALB 60 s): with
    # uvicorn's 5 s, a client reusing a pooled connection just as the server closes it gets a reset
    # (seen in the reliability soak: 1-2 per 4000 requests).
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=False,  # ours logs tokens and latency
        # uvicorn annotates these seconds as ints and uses them as floats (asyncio timeouts): fractions work
        timeout_graceful_shutdown=settings.shutdown_timeout,  # type: ignore[arg-type]
        lifespan="on",
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]
        http=guarded_protocol(settings.header_timeout, settings.send_timeout),
    )
    DrainingServer(config, ctx.lifecycle).run(sockets=[sock])
    return ctx.lifecycle


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind the listening socket before the model loads, so a taken port fails in a second, not after minutes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # only for bind_sockets' own set (see there)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one port, one per API-server process: with SO_REUSEPORT the kernel spreads
    new connections evenly over them (one socket shared by every process would hand a burst of connections to
    whichever process wakes first). A plain socket is bound first and closed: a port in use fails as it does
    with one process, and a second server cannot silently join this one's set (a socket without SO_REUSEPORT
    on the port keeps ours out, and ours keep later plain ones out)."""
    if count == 1:
        return [bind_socket(host, port)]
    bind_socket(host, port).close()
    sockets = [bind_socket(host, port, reuse_port=True)]
    port = sockets[0].getsockname()[1]  # --port 0: the others take the port the first was given
    try:
        for _ in range(count - 1):
            sockets.append(bind_socket(host, port, reuse_port=True))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
