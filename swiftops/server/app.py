"""`create_app(engine, settings)`: the OpenAI-compatible FastAPI app.

One router module per endpoint family (chat, completions, embeddings, served_models, probes); each route reads the
app's `ServerContext`, validates its body in one step (swiftops.server.validation) and returns JSON or
server-sent events. One middleware layer (swiftops.server.gate) stands in front of them all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.asyncexitstack import AsyncExitStackMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp

from swiftops.engines.base import InferEngine
from swiftops.engines.gc_heap import freeze_startup_heap, release_heap
from swiftops.media import worker_pools
from swiftops.metrics.prometheus import ServerMetrics
from swiftops.protocol import ErrorResponse
from swiftops.protocol.settings import ServerSettings
from swiftops.server import chat, completions, embeddings, probes, served_models
from swiftops.server.admission import AdmissionController
from swiftops.server.api_server_state import SharedState
from swiftops.server.auth import public_paths, resolve_api_key
from swiftops.server.body_limit import DEFAULT_MAX_BODY_BYTES
from swiftops.server.context import ServerContext
from swiftops.server.errors import install_error_handlers
from swiftops.server.gate import RequestGate
from swiftops.server.lifecycle import Lifecycle
from swiftops.server.request_log import RequestRecorder
from swiftops.server.served_models import ModelRegistry
from swiftops.server.ui import UI_PATHS, mount_ui

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Bad request"),
        (401, "Missing or wrong API key"),
        (404, "Unknown model"),
        (413, "Body too large"),
        (422, "Invalid field"),
        (429, "Overloaded; see Retry-After"),
        (500, "Internal error"),
        (503, "Not ready or shutting down"),
    )
}


class _GatedApp(FastAPI):
    """FastAPI with our gate as its only middleware layer around the exception handlers and routes.

    FastAPI's default stack adds layers (server errors, telemetry, its own body limit) that each wrap `send`
    once more per streamed chunk; the gate already answers any exception with a 500 and limits bodies."""

    gate_options: dict[str, Any] = {}

    def build_middleware_stack(self) -> ASGIApp:
        handlers = {key: value for key, value in self.exception_handlers.items() if key not in (500, Exception)}
        # AsyncExitStackMiddleware: FastAPI's routes need its exit stack in the scope (it wraps no `send`).
        inner: ASGIApp = ExceptionMiddleware(AsyncExitStackMiddleware(self.router), handlers=handlers, debug=self.debug)
        for cls, args, kwargs in reversed(self.user_middleware):  # none of ours; kept for any added later
            inner = cls(inner, *args, **kwargs)
        return RequestGate(inner, **self.gate_options)


def create_app(
    engine: InferEngine,
    settings: ServerSettings | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    open_paths: Iterable[str] = (),
    shared: SharedState | None = None,
    lifecycle: Lifecycle | None = None,
) -> FastAPI:
    """The app serving `engine`. `open_paths` are extra paths reachable without the API key (e.g. a web
    page that asks for the key itself); every other route, present or added later, requires it. `shared`: the
    admission counts and metrics files of a deployment with several API-server processes (swiftops.server.
    api_servers). `lifecycle`: one already warmed up (such a process warms up before it accepts connections)."""
    settings = settings or ServerSettings()
    # As many requests generate at once as the engine batches (256 for the pt engine on a GPU).
    concurrency = settings.max_concurrency or engine.max_batch_size or 64
    admission = AdmissionController(concurrency, settings.max_queue, shared.counts() if shared else None)
    worker_pools.configure(settings.media_workers, settings.media_queue)
    metrics = ServerMetrics(
        running=lambda: admission.running,
        waiting=lambda: admission.waiting,
        engine_running=lambda: float(engine.num_running),
        engine_waiting=lambda: float(engine.num_waiting),
        prefix_cache=engine.prefix_cache_stats,
        shared_dir=shared.metrics_dir if shared else None,
    )
    lifecycle = lifecycle or Lifecycle()
    ctx = ServerContext(
        engine=engine,
        settings=settings,
        models=ModelRegistry(engine, settings.served_model_name),
        admission=admission,
        metrics=metrics,
        lifecycle=lifecycle,
        results=RequestRecorder(settings.result_path) if settings.result_path else None,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lifecycle.watch(engine, asyncio.get_running_loop())
        warm_up = asyncio.ensure_future(lifecycle.warm_up(engine) if not lifecycle.ready else asyncio.sleep(0))
        freeze_startup_heap()  # every chunk of every stream passes this process's collector: keep it off the app
        try:
            yield
        finally:
            lifecycle.draining = True
            warm_up.cancel()
            release_heap()

    app = _GatedApp(
        title="swiftops",
        summary="OpenAI-compatible inference server",
        version="1",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    for family in (probes, served_models, chat, completions, embeddings):
        app.router.routes.extend(family.router.routes)  # flat, so `app.routes` lists each route with its path
    if settings.ui:
        mount_ui(app, title=settings.studio_title, lang=settings.lang)
        open_paths = [*open_paths, *UI_PATHS]
    app.gate_options = {
        "metrics": metrics,
        "api_key": resolve_api_key(settings.api_key),
        "open_paths": public_paths(settings.metrics_require_key) | frozenset(open_paths),
        "max_body_bytes": max_body_bytes,
    }
    return app
