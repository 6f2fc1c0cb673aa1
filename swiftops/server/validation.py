"""The one validation step: an OpenAI request body -> a validated engine request, every check in order, each
failing with its 4xx (the body's own pydantic validation ran before, in FastAPI).

Order: the size limits (sequences, max_tokens, text length, media counts), then whether the server takes
requests now (503 while warming up or draining), text that is no text (lone surrogates), the model name
(404), logprob limits, and token ids outside the vocabulary. What only the engine can judge (the prompt's
token count, an adapter's files, media contents) it reports with the same error classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from swiftops.protocol import AdapterRequest, BadRequestError, InferRequest, RequestConfig, UnsupportedError
from swiftops.protocol.openai_api import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from swiftops.server import request_limits
from swiftops.server.context import ServerContext


@dataclass
class ValidatedRequest:
    model_name: str  # the name to echo in responses
    adapter: AdapterRequest | None
    weight: int  # admission slots: prompts x n
    requests: list[InferRequest] = field(default_factory=list)  # one per prompt
    config: RequestConfig | None = None
    echoes: list[str] = field(default_factory=list)  # completions' echo=true: each prompt's text

    @property
    def request(self) -> InferRequest:
        return self.requests[0]


def check_encodable(body: BaseModel) -> None:
    """JSON lets a client send a lone UTF-16 surrogate (`"\\ud800"`): valid JSON, but no text. Tokenizers raise a
    TypeError on it (a 500); refuse it here with a 400 instead."""
    try:
        body.model_dump_json()
    except PydanticSerializationError as exc:
        if "surrogates not allowed" not in str(exc):
            return  # not ours to judge here: the handler reports it as before
        raise BadRequestError(
            "the request holds a lone UTF-16 surrogate escape (such as \\ud800), which is not "
            "text; send valid Unicode (surrogates only in pairs)",
            code="invalid_unicode",
        ) from None


def check_top_logprobs(ctx: ServerContext, top_logprobs: int | None, param: str) -> None:
    if top_logprobs is not None and top_logprobs > ctx.settings.max_logprobs:
        raise BadRequestError(
            f"{param}={top_logprobs} is above this server's limit of {ctx.settings.max_logprobs} (--max_logprobs)",
            param=param,
        )


def _check_common(ctx: ServerContext, body: BaseModel) -> tuple[str, AdapterRequest | None]:
    ctx.lifecycle.check_accepting()
    check_encodable(body)
    return ctx.models.resolve(getattr(body, "model", None))


def validate_chat(ctx: ServerContext, body: ChatCompletionRequest) -> ValidatedRequest:
    weight = request_limits.check_chat(ctx, body)
    model_name, adapter = _check_common(ctx, body)
    check_top_logprobs(ctx, body.top_logprobs, "top_logprobs")
    return ValidatedRequest(model_name, adapter, weight, [body.to_infer_request()], body.to_request_config())


def validate_completion(ctx: ServerContext, body: CompletionRequest) -> ValidatedRequest:
    weight = request_limits.check_completion(ctx, body)
    model_name, adapter = _check_common(ctx, body)
    check_top_logprobs(ctx, body.logprobs, "logprobs")
    _check_token_ids(ctx, body)
    return ValidatedRequest(
        model_name, adapter, weight, body.to_infer_requests(), body.to_request_config(), _echo_texts(ctx, body)
    )


def validate_embedding(ctx: ServerContext, body: EmbeddingRequest) -> ValidatedRequest:
    model_name, adapter = _check_common(ctx, body)
    return ValidatedRequest(model_name, adapter, 1)


def _check_token_ids(ctx: ServerContext, body: CompletionRequest) -> None:
    vocab = getattr(getattr(ctx.engine, "tokenizer", None), "__len__", None)
    size = vocab() if vocab is not None else None
    for prompt in body.prompts:
        if isinstance(prompt, list) and any(t < 0 or (size is not None and t >= size) for t in prompt):
            raise BadRequestError(
                f"`prompt` holds token ids outside the vocabulary (0..{size - 1 if size else '?'})", param="prompt"
            )


def _echo_texts(ctx: ServerContext, body: CompletionRequest) -> list[str]:
    if not body.echo:
        return ["" for _ in body.prompts]
    if body.logprobs is not None:
        raise UnsupportedError(
            "`echo` together with `logprobs` needs the prompt's logprobs, which this server does "
            "not compute; drop one of them",
            param="echo",
        )
    tokenizer = getattr(ctx.engine, "tokenizer", None)
    texts = []
    for prompt in body.prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
        elif tokenizer is not None:
            texts.append(tokenizer.decode(prompt))
        else:
            raise UnsupportedError(
                "`echo` of token-id prompts needs the tokenizer, which this backend does not "
                "expose; send the prompt as text",
                param="echo",
            )
    return texts
