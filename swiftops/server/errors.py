"""Every error the server answers, in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

FastAPI's own errors (validation, unknown route, wrong method) are mapped to that shape too, so a
client only ever parses one error format.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from swiftops.protocol.errors import ErrorDetail, ErrorResponse, OverloadedError, SwiftopsError

logger = logging.getLogger("swiftops.server")

# Seconds a client told "429" is asked to wait; a slot frees within one generation on a loaded server.
RETRY_AFTER_S = 1


class PayloadTooLargeError(SwiftopsError):
    status = 413
    type = "invalid_request_error"


class ValidationFailedError(SwiftopsError):
    """The body parsed but a field is wrong (FastAPI's RequestValidationError, in OpenAI's shape)."""

    status = 422


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; nothing is sent back (logged as 499)."""


_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable",
}


def error_body(
    status: int, message: str, *, type: str | None = None, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    detail = ErrorDetail(
        message=message, type=type or _STATUS_TYPES.get(status, "invalid_request_error"), param=param, code=code
    )
    return ErrorResponse(error=detail).model_dump()


def error_response(exc: SwiftopsError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(exc, OverloadedError) else None
    return JSONResponse(exc.to_response().model_dump(), status_code=exc.status, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts)


def validation_error(exc: RequestValidationError) -> SwiftopsError:
    """The most specific problem of a validation failure, as one readable message."""
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        error = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (error.get("ctx") or {}).get("error", "invalid JSON")
        return SwiftopsError(
            f"the request body is not valid JSON ({reason}); send a JSON object", code="invalid_json"
        )  # 400, as OpenAI answers malformed JSON
    if not errors:
        return ValidationFailedError("the request body is invalid")
    # A value failing a union (content: str | list of parts) yields one error per member; the
    # deepest location names the field that is actually wrong.
    error = max(errors, key=lambda e: len(e.get("loc", ())))
    param = _loc_to_param(tuple(error.get("loc", ())))
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        message = f"`{param}` is required" if param else "the request body is missing"
    elif param:
        message = f"{param}: {message}"
    if len(errors) > 1 and len({_loc_to_param(tuple(e.get("loc", ()))).split(".")[0] for e in errors}) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return ValidationFailedError(message, param=param or None, code=str(error.get("type")))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SwiftopsError)
    async def _swiftops_error(request: Request, exc: SwiftopsError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = None
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /openapi.json for the routes"
        elif exc.status_code == 400 and message == "There was an error parsing the body":  # FastAPI's wording
            message, code = "the request body could not be parsed; send UTF-8 JSON", "invalid_json"
        return JSONResponse(
            error_body(exc.status_code, message, code=code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    # Other exceptions: RequestLogMiddleware answers 500 (with the request id) and logs the traceback.
