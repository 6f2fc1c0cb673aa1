"""The messages between the API-server process and the engine process, as msgpack over ZeroMQ.

Small and cheap on the hot path: a request is submitted as token ids once; the engine answers with one
`Steps` message per engine step holding every sequence's new token ids (array-like structs: no field names
on the wire). Anything large or rare (the tokenizer at start-up, a beam-search response) is bytes inside.
"""

from __future__ import annotations

import msgspec


class ErrorInfo(msgspec.Struct, array_like=True):
    """A SwiftopsError across the boundary: its class name (the HTTP status follows), message, param, code."""

    kind: str
    message: str
    param: str | None = None
    code: str | None = None


# ---- API server -> engine ------------------------------------------------------------------------------
class Submit(msgspec.Struct, tag=True, array_like=True):
    rid: int
    config: bytes  # RequestConfig as JSON (validated once by the server; pydantic once per request)
    prompt_ids: list[int] | None = None  # tokenized by the server
    request: bytes | None = None  # the InferRequest as JSON: for beams, and for its tools (a forced tool call)
    whole: bool = False  # answer with one `Whole` response (beam search: transformers' generate, in-process)
    adapter: str | None = None
    adapter_path: str | None = None  # a LoRA adapter by path, loaded on first use
    every_step: bool = True  # hand over tokens each step (streams, stop strings); else once at the end


class Abort(msgspec.Struct, tag=True, array_like=True):
    rid: int
    index: int = -1  # one choice, or -1: all of them


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    pass


ToEngine = Submit | Abort | Shutdown


# ---- engine -> API server ------------------------------------------------------------------------------
class Ready(msgspec.Struct, tag=True, array_like=True):
    info: bytes  # a pickled EngineInfo (the tokenizer included): sent once


class LoadFailed(msgspec.Struct, tag=True, array_like=True):
    error: ErrorInfo


class Delta(msgspec.Struct, array_like=True):
    """What one sequence produced since its last delta."""

    rid: int
    index: int
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    # Raw logprobs, one per token: [chosen logprob, [[token id, logprob], ...]] (only when asked for).
    logprobs: list | None = None
    error: ErrorInfo | None = None


class Steps(msgspec.Struct, tag=True, array_like=True):
    deltas: list[Delta]
    running: int  # the engine's counts, for /metrics
    waiting: int
    prefix_cache: list[int] | None = None  # (queried, hit) prompt tokens since start; None: caching off


class Failed(msgspec.Struct, tag=True, array_like=True):
    """A request refused or failed before any token (unknown adapter, a media error...)."""

    rid: int
    error: ErrorInfo


class Whole(msgspec.Struct, tag=True, array_like=True):
    """A whole response computed in the engine process (beam search, media prompts): ChatCompletionResponse JSON."""

    rid: int
    response: bytes


FromEngine = Ready | LoadFailed | Steps | Failed | Whole
