"""GET /health, /ready and /metrics: what Kubernetes and Prometheus read.

/health fails (503) once the engine can serve no more (its process died): the server exits non-zero right
after, so the pod restarts. /ready is 503 until the warm-up generation finished, and again while draining.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from swiftops.server.errors import error_body

router = APIRouter()


@router.get("/health", summary="Liveness: the process is up and its engine alive")
async def health(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    failure = ctx.lifecycle.engine_failure or ctx.engine.health_error()
    if failure:
        return JSONResponse(error_body(503, failure), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/ready", summary="Readiness: model loaded and warmed up (503 before, and while draining)")
async def ready(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    lifecycle = ctx.lifecycle
    if lifecycle.ready and not lifecycle.draining and lifecycle.engine_failure is None:
        return JSONResponse({"status": "ready", "model": ctx.models.served_name})
    return JSONResponse(error_body(503, lifecycle.not_ready_reason()), status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(request: Request) -> Response:
    metrics = request.app.state.ctx.metrics
    return Response(metrics.render(), media_type=metrics.content_type)
