"""The one validation step: an OpenAI request body -> a validated engine request, every check in order, each
failing with its 4xx (the body's own shape, its field types and ranges, is pydantic's, in FastAPI, before).

Order, for chat and completions: the request's size, before anything is tokenized, decoded or queued
(sequences: prompts x n; `max_tokens` against the context; text longer than the context can hold; media
counts), then whether the server takes requests now (503 while warming up or draining), text that is no text
(lone surrogates), the model name (404), logprob limits, and token ids outside the vocabulary. An embedding
request gets the last three of those; its `dimensions` is checked once the model's width is known. What only
the engine can judge once the prompt is tokenized (its length, an adapter's files, media contents) the
engines check for every caller, the Python API included (swiftops.engines.prompt_checks), with the same
error classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError

from swiftops.protocol import (
    AdapterRequest,
    BadRequestError,
    InferRequest,
    ModelNotFoundError,
    NotReadyError,
    RequestConfig,
    UnsupportedError,
)
from swiftops.protocol.openai_api import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

if TYPE_CHECKING:  # types only: the context holds the registry and lifecycle, whose routes call in here
    from swiftops.server.context import ServerContext
    from swiftops.server.lifecycle import Lifecycle
    from swiftops.server.served_models import ModelRegistry

_chars_per_token: dict[int, int] = {}


@dataclass
class ValidatedRequest:
    model_name: str  # the name to echo in responses
    adapter: AdapterRequest | None
    weight: int  # admission slots: prompts x n
    requests: list[InferRequest] = field(default_factory=list)  # one per prompt
    config: RequestConfig = field(default_factory=RequestConfig)
    echoes: list[str] = field(default_factory=list)  # completions' echo=true: each prompt's text

    @property
    def request(self) -> InferRequest:
        return self.requests[0]


# ---- the steps, per endpoint ----------------------------------------------------------------------------
def validate_chat(ctx: ServerContext, body: ChatCompletionRequest) -> ValidatedRequest:
    check_messages(body)
    weight = check_sequences(ctx, 1, body.n)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    check_max_tokens(ctx, max_tokens, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    check_text_length(ctx, _message_texts(body), "messages")
    check_media_counts(ctx, body)
    model_name, adapter = _check_common(ctx, body)
    check_top_logprobs(ctx, body.top_logprobs, "top_logprobs")
    return ValidatedRequest(model_name, adapter, weight, [body.to_infer_request()], body.to_request_config())


def validate_completion(ctx: ServerContext, body: CompletionRequest) -> ValidatedRequest:
    prompts: list[str | list[int]] = body.prompts
    weight = check_sequences(ctx, len(prompts), body.n)
    if "max_tokens" in body.model_fields_set:  # OpenAI's default of 16 is not the client's choice
        check_max_tokens(ctx, body.max_tokens, "max_tokens")
    check_prompt_lengths(ctx, prompts)
    model_name, adapter = _check_common(ctx, body)
    check_top_logprobs(ctx, body.logprobs, "logprobs")
    check_token_ids(ctx, prompts)
    return ValidatedRequest(
        model_name, adapter, weight, body.to_infer_requests(), body.to_request_config(), _echo_texts(ctx, body)
    )


def validate_embedding(ctx: ServerContext, body: EmbeddingRequest) -> ValidatedRequest:
    model_name, adapter = _check_common(ctx, body)
    return ValidatedRequest(model_name, adapter, 1)


def _check_common(
    ctx: ServerContext, body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest
) -> tuple[str, AdapterRequest | None]:
    check_accepting(ctx.lifecycle)
    check_encodable(body)
    return resolve_model(ctx.models, body.model)


# ---- size, before anything is tokenized --------------------------------------------------------------------
def check_messages(body: ChatCompletionRequest) -> None:
    """A user message needs content (OpenAI answers 400 for a missing, null or empty one); other roles may
    leave it out (an assistant turn with tool calls)."""
    for i, message in enumerate(body.messages):
        if message.role == "user" and (message.content is None or message.content == []):
            raise BadRequestError(
                f"messages[{i}] is a user message without content; give its text or content parts",
                param=f"messages[{i}].content",
            )


def max_sequences(ctx: ServerContext) -> int:
    s = ctx.settings
    if s.max_sequences_per_request is not None:
        return s.max_sequences_per_request
    concurrency = ctx.admission.max_concurrency  # resolved: the flag, else the engine's batch size
    return min(concurrency, s.max_queue) if s.max_queue > 0 else concurrency


def check_sequences(ctx: ServerContext, prompts: int, n: int) -> int:
    """The request's weight (prompts x n), which admission counts; a 400 past --max_sequences_per_request."""
    count = prompts * n
    limit = max_sequences(ctx)
    if count > limit:
        raise BadRequestError(
            f"the request asks for {count} sequences ({prompts} prompt(s) x n={n}); this server "
            f"takes at most {limit} per request (--max_sequences_per_request); send fewer prompts "
            f"or a smaller n",
            param="n" if prompts == 1 else "prompt",
            code="too_many_sequences",
        )
    return count


def check_max_tokens(ctx: ServerContext, max_tokens: int | None, param: str) -> None:
    """A `max_tokens` the client gave that no prompt leaves room for is a 400 (vLLM's answer), not a silent clamp."""
    max_len = ctx.engine.max_model_len
    if max_tokens is not None and max_len and max_tokens >= max_len:
        raise BadRequestError(
            f"{param}={max_tokens} is not below the model's context length of {max_len} tokens "
            f"(prompt + output); ask for fewer tokens",
            param=param,
            code="context_length_exceeded",
        )


def max_chars_per_token(tokenizer: Any) -> int | None:
    """The most characters one token can stand for: the length of the longest vocabulary entry.

    Byte-level BPE entries spell each byte as one character and decoded text has at most one character per
    byte; SentencePiece entries spell a space as one '▁'. So no token covers more characters than its entry."""
    key = id(tokenizer)
    if key not in _chars_per_token:
        try:
            vocab = tokenizer.get_vocab()
        except Exception:
            return None
        _chars_per_token[key] = max((len(t) for t in vocab), default=0) or 1
    return _chars_per_token[key]


def check_text_length(ctx: ServerContext, texts: Iterable[str], param: str) -> None:
    """A 400 at once for text that cannot fit the context whatever the tokenizer makes of it (before the
    tokenizer sees a byte of a hostile megabyte)."""
    max_len, tokenizer = ctx.engine.max_model_len, ctx.engine.tokenizer
    if not max_len or tokenizer is None:
        return
    per_token = max_chars_per_token(tokenizer)
    if per_token is None:
        return
    limit = max_len * per_token
    total = 0
    for text in texts:
        total += len(text)
        if total > limit:
            raise BadRequestError(
                f"the {param} has more than {limit} characters: even at the tokenizer's longest token "
                f"({per_token} characters) that is over the model's context of {max_len} tokens; send a shorter "
                f"{param}",
                param=param,
                code="context_length_exceeded",
            )


def check_prompt_lengths(ctx: ServerContext, prompts: list[str | list[int]]) -> None:
    """Each completions prompt: text by its characters (as above), token ids by their count."""
    max_len = ctx.engine.max_model_len
    for prompt in prompts:
        if isinstance(prompt, str):
            check_text_length(ctx, [prompt], "prompt")
        elif max_len and len(prompt) >= max_len:
            raise BadRequestError(
                f"a prompt has {len(prompt)} token ids; the model's context is {max_len} tokens",
                param="prompt",
                code="context_length_exceeded",
            )


def _message_texts(body: ChatCompletionRequest) -> Iterable[str]:
    for message in body.messages:
        if isinstance(message.content, str):
            yield message.content
        elif message.content:
            for part in message.content:
                text = getattr(part, "text", None)  # content parts of every type; only text parts have text
                if isinstance(text, str):
                    yield text
        if message.reasoning_content:
            yield message.reasoning_content


def _media_counts(body: ChatCompletionRequest) -> dict[str, int]:
    counts = {"image": len(body.images), "video": len(body.videos)}
    for message in body.messages:
        if isinstance(message.content, list):
            for part in message.content:
                kind = getattr(part, "type", "")
                kind = kind[:-4] if kind.endswith("_url") else kind
                if kind in counts:
                    counts[kind] += 1
    return counts


def check_media_counts(ctx: ServerContext, body: ChatCompletionRequest) -> None:
    """Images and videos per request (--max_images_per_prompt, --max_videos_per_prompt); their decoded size and
    tokens are held to a per-request budget while they load (ServedRequest sets it)."""
    s = ctx.settings
    for kind, count in _media_counts(body).items():
        limit = s.max_images_per_prompt if kind == "image" else s.max_videos_per_prompt
        if count > limit:
            flag = "--max_images_per_prompt" if kind == "image" else "--max_videos_per_prompt"
            raise BadRequestError(
                f"the request has {count} {kind}s; this server takes at most {limit} per request ({flag}); send fewer",
                param=f"{kind}s",
                code="too_many_media",
            )


# ---- the server, the text, the model --------------------------------------------------------------------
def check_accepting(lifecycle: Lifecycle) -> None:
    """503 unless new generation requests are taken now (warmed up, not draining)."""
    if lifecycle.draining:
        raise NotReadyError(
            "the server is shutting down and takes no new requests; send it to another replica",
            code="shutting_down",
        )
    if not lifecycle.ready:
        raise NotReadyError(lifecycle.not_ready_reason(), code="not_ready")


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


def resolve_model(models: ModelRegistry, requested: str | None) -> tuple[str, AdapterRequest | None]:
    """(the name to echo in the response, the adapter to run or None for the base model); 404 for a name this
    server does not serve."""
    if requested is None or requested in models.base_aliases:
        return requested or models.served_name, None
    if requested in models.adapters:
        return requested, AdapterRequest(name=requested)
    raise ModelNotFoundError(
        f"the model {requested!r} does not exist; this server serves "
        f"{', '.join(repr(n) for n in models.names)} (see GET /v1/models)",
        param="model",
        code="model_not_found",
    )


# ---- what the request asks of the output -----------------------------------------------------------------
def check_top_logprobs(ctx: ServerContext, top_logprobs: int | None, param: str) -> None:
    if top_logprobs is not None and top_logprobs > ctx.settings.max_logprobs:
        raise BadRequestError(
            f"{param}={top_logprobs} is above this server's limit of {ctx.settings.max_logprobs} (--max_logprobs)",
            param=param,
        )


def check_token_ids(ctx: ServerContext, prompts: list[str | list[int]]) -> None:
    tokenizer = ctx.engine.tokenizer
    size = len(tokenizer) if tokenizer is not None else None
    for prompt in prompts:
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
    tokenizer = ctx.engine.tokenizer
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


def check_dimensions(dimensions: int | None, width: int) -> None:
    """An embedding's `dimensions`, once the model's width is known (the first vector)."""
    if dimensions is not None and dimensions > width:
        raise BadRequestError(f"dimensions={dimensions} is more than the model's {width}", param="dimensions")
