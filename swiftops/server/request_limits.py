"""Checks on a request's size that run before anything is tokenized, decoded or queued.

Each one answers a cheap question from the parsed body and the engine's public facts (`max_model_len`,
`tokenizer`, `encoder`) so that one hostile or careless body cannot take the server's memory or slots:

* sequences: prompts x n, capped per request (400) and counted by admission (429 when the queue is full);
* text length: more characters than `max_model_len` tokens can hold (the tokenizer's longest vocabulary
  entry bounds the characters per token) is a 400 before the tokenizer sees a byte;
* `max_tokens` at or beyond the context length is a 400 (a server default is still capped silently);
* media: images and videos per request, and a per-request budget for their decoded size and tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from swiftops.media.budget import MediaBudget
from swiftops.protocol import BadRequestError
from swiftops.protocol.openai_api import ChatCompletionRequest, CompletionRequest
from swiftops.server.context import ServerContext

_chars_per_token: dict[int, int] = {}


def max_sequences(ctx: ServerContext) -> int:
    s = ctx.settings
    if s.max_sequences_per_request is not None:
        return s.max_sequences_per_request
    concurrency = ctx.admission.max_concurrency  # resolved: the flag, else the engine's batch size
    return min(concurrency, s.max_queue) if s.max_queue > 0 else concurrency


def check_sequences(ctx: ServerContext, prompts: int, n: int) -> int:
    """The request's weight (prompts x n); a 400 past --max_sequences_per_request."""
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


def _engine_max_len(ctx: ServerContext) -> int | None:
    value = getattr(ctx.engine, "max_model_len", None)
    return value if isinstance(value, int) and value > 0 else None


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
    """A 400 at once for text that cannot fit the context whatever the tokenizer makes of it."""
    max_len, tokenizer = _engine_max_len(ctx), getattr(ctx.engine, "tokenizer", None)
    if max_len is None or tokenizer is None:
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


def check_max_tokens(ctx: ServerContext, max_tokens: int | None, param: str) -> None:
    """A `max_tokens` the client gave that no prompt leaves room for is a 400 (vLLM's answer), not a silent clamp."""
    max_len = _engine_max_len(ctx)
    if max_tokens is not None and max_len is not None and max_tokens >= max_len:
        raise BadRequestError(
            f"{param}={max_tokens} is not below the model's context length of {max_len} tokens "
            f"(prompt + output); ask for fewer tokens",
            param=param,
            code="context_length_exceeded",
        )


def _message_texts(body: ChatCompletionRequest) -> Iterable[str]:
    for message in body.messages:
        if isinstance(message.content, str):
            yield message.content
        elif message.content:
            for part in message.content:
                text = getattr(part, "text", None)
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


def media_budget(ctx: ServerContext) -> MediaBudget:
    """A fresh per-request budget, with a token estimate where the model's processor is Qwen-style."""
    budget = MediaBudget(max_decoded_bytes=ctx.settings.max_media_bytes_decoded, max_tokens=_engine_max_len(ctx))
    encoder = getattr(ctx.engine, "encoder", None)
    image_processor = getattr(getattr(encoder, "processor", None), "image_processor", None)
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    if isinstance(patch, int) and isinstance(merge, int):
        size = dict(getattr(image_processor, "size", None) or {})
        limits = getattr(encoder, "limits", None)
        budget.pixels_per_token = (patch * merge) ** 2
        budget.image_max_pixels = getattr(limits, "max_pixels", None) or size.get("longest_edge")
        budget.video_max_pixels = getattr(limits, "video_max_pixels", None) or size.get("longest_edge")
        budget.frames_per_token = int(getattr(image_processor, "temporal_patch_size", 2) or 2)
    return budget


def check_chat(ctx: ServerContext, body: ChatCompletionRequest) -> int:
    """Every pre-tokenization check of a chat request; returns its admission weight."""
    body.check_messages()
    weight = check_sequences(ctx, 1, body.n)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    check_max_tokens(ctx, max_tokens, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    check_text_length(ctx, _message_texts(body), "messages")
    check_media_counts(ctx, body)
    return weight


def check_completion(ctx: ServerContext, body: CompletionRequest) -> int:
    """Every pre-tokenization check of a completions request; returns its admission weight."""
    prompts: list[str | list[int]] = body.prompts
    weight = check_sequences(ctx, len(prompts), body.n)
    if "max_tokens" in body.model_fields_set:  # OpenAI's default of 16 is not the client's choice
        check_max_tokens(ctx, body.max_tokens, "max_tokens")
    max_len = _engine_max_len(ctx)
    for prompt in prompts:
        if isinstance(prompt, str):
            check_text_length(ctx, [prompt], "prompt")
        elif max_len is not None and len(prompt) >= max_len:
            raise BadRequestError(
                f"a prompt has {len(prompt)} token ids; the model's context is {max_len} tokens",
                param="prompt",
                code="context_length_exceeded",
            )
    return weight
