"""Errors a user can cause, each with the HTTP status the server answers and OpenAI's error shape."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class SwiftopsError(Exception):
    """Base of errors whose message tells the user what to do. `status` is the HTTP status to answer with."""

    status: int = 400
    type: str = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))


class BadRequestError(SwiftopsError):
    status = 400


class PromptTooLongError(BadRequestError):
    """The prompt does not fit the model's context (no room for even one new token)."""

    def __init__(self, prompt_tokens: int, max_model_len: int):
        super().__init__(
            f"the prompt has {prompt_tokens} tokens but the model's context is {max_model_len} tokens; "
            f"shorten the prompt (or raise --max_model_len if the model supports a longer context)",
            param="messages",
            code="context_length_exceeded",
        )


class ModelNotFoundError(SwiftopsError):
    status = 404
    type = "not_found_error"


class AuthenticationError(SwiftopsError):
    status = 401
    type = "authentication_error"


class OverloadedError(SwiftopsError):
    status = 429
    type = "rate_limit_error"


class NotReadyError(SwiftopsError):
    status = 503
    type = "service_unavailable"


class UnsupportedError(BadRequestError):
    """The chosen backend or model cannot do what was asked (see the capability table)."""


class ConfigError(SwiftopsError):
    """A bad setting, flag, manifest or file given on the command line; the CLI exits 2."""


class EngineError(SwiftopsError):
    """An internal failure while serving one request (the server answers 500; other requests carry on)."""

    status = 500
    type = "internal_error"
