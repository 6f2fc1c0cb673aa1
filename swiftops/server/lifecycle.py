"""Readiness and shutdown.

Ready means: the model is loaded and one warm-up generation finished (the first generation compiles
kernels and allocates caches; a load balancer should not send traffic before it). SIGTERM drains:
/ready turns 503 at once, new requests are refused, in-flight ones finish for up to
`shutdown_timeout` seconds, then the process exits 0 (Kubernetes reads a non-zero exit as a crash).
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType
from typing import Optional

import uvicorn

from swiftops.engines.base import InferEngine
from swiftops.protocol import InferRequest, NotReadyError, RequestConfig, UnsupportedError

logger = logging.getLogger("swiftops.server")


class Lifecycle:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.warmup_error: Optional[str] = None

    def check_accepting(self) -> None:
        """Raise 503 unless new generation requests are taken now."""
        if self.draining:
            raise NotReadyError("the server is shutting down and takes no new requests; send it to another replica",
                                code="shutting_down")
        if not self.ready:
            raise NotReadyError(self.not_ready_reason(), code="not_ready")

    def not_ready_reason(self) -> str:
        if self.draining:
            return "the server is shutting down"
        if self.warmup_error:
            return f"the warm-up generation failed ({self.warmup_error}); see the server log"
        return "the model is warming up; retry in a few seconds (poll GET /ready)"

    async def warm_up(self, engine: InferEngine) -> None:
        """One tiny generation (or embedding, for embedding models), then ready."""
        try:
            try:
                request = InferRequest(messages=[{"role": "user", "content": "hi"}])
                await engine.infer_async(request, RequestConfig(max_tokens=1, temperature=0))
            except UnsupportedError:
                await engine.embed_async(["hi"])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # stay unready: the probe keeps the pod out of the load balancer
            self.warmup_error = f"{type(exc).__name__}: {exc}"
            logger.exception("warm-up generation failed; /ready stays 503")
            return
        self.ready = True
        logger.info("warm-up done; ready")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM marks the app draining and ends in exit status 0.

    uvicorn re-raises the signal after its graceful shutdown, which kills the process with
    status 143; a drained shutdown is a success.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: Optional[FrameType]) -> None:
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
