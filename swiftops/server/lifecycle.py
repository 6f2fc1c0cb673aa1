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
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from swiftops.engines.base import InferEngine
from swiftops.protocol import InferRequest, RequestConfig, SwiftopsError

logger = logging.getLogger("swiftops.server")
_FATAL_EXIT_SECONDS = 8.0  # after the engine died: within Kubernetes' patience and the 10 s we promise


class Lifecycle:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.warmup_error: str | None = None
        self.engine_failure: str | None = None  # the engine can serve no more (its process died)
        self.on_fatal: Callable[[], None] | None = None  # set by DrainingServer: exit now, non-zero

    def watch(self, engine: InferEngine, loop: asyncio.AbstractEventLoop) -> None:
        """Follow an engine that can die apart from the server (its own process): on death, fail /health and
        /ready and stop the server at once (exit status 1), so Kubernetes restarts the pod."""
        engine.on_death(lambda reason: loop.call_soon_threadsafe(self.engine_died, reason))

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
        self.lifecycle.draining = True
        if sig == signal.SIGTERM and not self.should_exit:
            logger.info("SIGTERM: draining in-flight requests (up to %ss)", self.config.timeout_graceful_shutdown)
            self.should_exit = True
            return
        super().handle_exit(sig, frame)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind the listening socket before the model loads, so a taken port fails in a second, not after minutes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # No SO_REUSEPORT: a second server on the same port must fail, not share it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
