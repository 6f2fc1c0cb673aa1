"""`create_app(engine, settings)`: the OpenAI-compatible FastAPI app. Routes are thin: each hands its
parsed body to a handler module (chat, completions, embeddings) and returns JSON or server-sent events.

Middleware, outermost first: request id + access log, API key, body size limit. All are plain ASGI
(not BaseHTTPMiddleware), which would buffer streams and hide client disconnects.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Iterable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from swiftops.engines.base import InferEngine
from swiftops.media import worker_pools
from swiftops.metrics.prometheus import ServerMetrics
from swiftops.protocol import (ChatCompletionResponse, CompletionResponse, EmbeddingResponse, ErrorResponse,
                               ModelCard, ModelList)
from swiftops.protocol.openai_api import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from swiftops.protocol.settings import ServerSettings
from swiftops.server import chat, completions, embeddings
from swiftops.server.admission import AdmissionController
from swiftops.server.auth import ApiKeyMiddleware, public_paths, resolve_api_key
from swiftops.server.body_limit import DEFAULT_MAX_BODY_BYTES, BodySizeLimitMiddleware
from swiftops.server.context import ServerContext
from swiftops.server.errors import error_body, install_error_handlers
from swiftops.server.lifecycle import Lifecycle
from swiftops.server.models import ModelRegistry
from swiftops.server.request_log import RequestLogMiddleware, ResultWriter
from swiftops.server.ui import UI_PATHS, allow_cross_origin, mount_ui

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (400, "Bad request"), (401, "Missing or wrong API key"), (404, "Unknown model"), (413, "Body too large"),
        (422, "Invalid field"), (429, "Overloaded; see Retry-After"), (500, "Internal error"),
        (503, "Not ready or shutting down"))}
_STREAM = {"text/event-stream": {"schema": {"type": "string", "description": "`data: {chunk}` events, then "
                                                                              "`data: [DONE]` (with stream=true)"}}}


def _engine_count(engine: InferEngine, name: str) -> float:
    return float(getattr(engine, name, 0) or 0)


def create_app(engine: InferEngine, settings: Optional[ServerSettings] = None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, open_paths: Iterable[str] = ()) -> FastAPI:
    """The app serving `engine`. `open_paths` are extra paths reachable without the API key (e.g. a web
    page that asks for the key itself); every other route, present or added later, requires it."""
    settings = settings or ServerSettings()
    # As many requests generate at once as the engine batches (256 for the pt engine on a GPU).
    concurrency = settings.max_concurrency or getattr(engine, "max_batch_size", None) or 64
    admission = AdmissionController(concurrency, settings.max_queue)
    worker_pools.configure(settings.media_workers, settings.media_queue)
    metrics = ServerMetrics(running=lambda: admission.running, waiting=lambda: admission.waiting,
                            engine_running=lambda: _engine_count(engine, "num_running"),
                            engine_waiting=lambda: _engine_count(engine, "num_waiting"),
                            prefix_cache=getattr(engine, "prefix_cache_stats", None))
    lifecycle = Lifecycle()
    ctx = ServerContext(engine=engine, settings=settings, models=ModelRegistry(engine, settings.served_model_name),
                        admission=admission, metrics=metrics, lifecycle=lifecycle,
                        results=ResultWriter(settings.result_path) if settings.result_path else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm_up = asyncio.ensure_future(lifecycle.warm_up(engine))
        try:
            yield
        finally:
            lifecycle.draining = True
            warm_up.cancel()

    app = FastAPI(title="swiftops", summary="OpenAI-compatible inference server", version="1",
                  lifespan=lifespan, responses=_ERRORS)
    app.state.ctx = ctx
    install_error_handlers(app)

    @app.get("/health", summary="Liveness: the process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded and warmed up (503 before, and while draining)")
    async def ready() -> JSONResponse:
        if lifecycle.ready and not lifecycle.draining:
            return JSONResponse({"status": "ready", "model": ctx.models.served_name})
        return JSONResponse(error_body(503, lifecycle.not_ready_reason()), status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", response_model=ModelList, summary="The served model and its LoRA adapters")
    async def list_models() -> ModelList:
        return ctx.models.listing()

    @app.get("/v1/models/{model}", response_model=ModelCard, summary="One model by name")
    async def retrieve_model(model: str) -> ModelCard:
        return ctx.models.card(model)

    @app.post("/v1/chat/completions", summary="Chat completion (OpenAI)",
              responses={200: {"model": ChatCompletionResponse, "content": _STREAM}})
    async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat.create_chat_completion(ctx, body, request)

    @app.post("/v1/completions", summary="Text completion of a raw prompt (OpenAI legacy)",
              responses={200: {"model": CompletionResponse, "content": _STREAM}})
    async def create_completion(body: CompletionRequest, request: Request) -> Response:
        return await completions.create_completion(ctx, body, request)

    @app.post("/v1/embeddings", summary="Embeddings (embedding models only)",
              responses={200: {"model": EmbeddingResponse}})
    async def create_embedding(body: EmbeddingRequest, request: Request) -> Response:
        return await embeddings.create_embedding(ctx, body, request)

    if settings.ui:
        mount_ui(app, title=settings.studio_title, lang=settings.lang)
        open_paths = [*open_paths, *UI_PATHS]

    # add_middleware prepends: the last added runs first (outermost).
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=resolve_api_key(settings.api_key),
                       open_paths=public_paths(settings.metrics_require_key) | frozenset(open_paths))
    app.add_middleware(RequestLogMiddleware, metrics=metrics)
    allow_cross_origin(app)
    return app
