"""POST /v1/completions: raw prompts, no chat template (ms-swift wraps them in a chat turn; we don't).

Each prompt of the request runs as its own engine request (`InferRequest(prompt=...)`), all
concurrently; choice `i * n + j` is choice j of prompt i, as OpenAI numbers them.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Optional, Union

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from swiftops.protocol import (BadRequestError, ChatCompletionStreamResponse, ChoiceLogprobs, CompletionChoice,
                               CompletionLogprobs, CompletionResponse, UnsupportedError, UsageInfo, new_id)
from swiftops.protocol.openai_api import CompletionRequest
from swiftops.server import request_limits
from swiftops.server.context import ServerContext
from swiftops.server.errors import ClientDisconnected
from swiftops.server.served_request import ServedRequest
from swiftops.server.sse import as_json_event, sse_event

ROUTE = "/v1/completions"


def legacy_logprobs(logprobs: Optional[ChoiceLogprobs], offset: int) -> tuple[Optional[CompletionLogprobs], int]:
    """Chat-style logprobs -> the completions API's parallel lists; `offset` is where the text starts."""
    if logprobs is None or logprobs.content is None:
        return None, offset
    out = CompletionLogprobs()
    for entry in logprobs.content:
        out.tokens.append(entry.token)
        out.token_logprobs.append(entry.logprob)
        out.top_logprobs.append({t.token: t.logprob for t in entry.top_logprobs} or None)
        out.text_offset.append(offset)
        offset += len(entry.token)
    return out, offset


def _echo_texts(ctx: ServerContext, body: CompletionRequest) -> list[str]:
    if not body.echo:
        return ["" for _ in body.prompts]
    if body.logprobs is not None:
        raise UnsupportedError("`echo` together with `logprobs` needs the prompt's logprobs, which this server does "
                               "not compute; drop one of them", param="echo")
    tokenizer = getattr(ctx.engine, "tokenizer", None)
    texts = []
    for prompt in body.prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
        elif tokenizer is not None:
            texts.append(tokenizer.decode(prompt))
        else:
            raise UnsupportedError("`echo` of token-id prompts needs the tokenizer, which this backend does not "
                                   "expose; send the prompt as text", param="echo")
    return texts


def _check_token_ids(ctx: ServerContext, body: CompletionRequest) -> None:
    vocab = getattr(getattr(ctx.engine, "tokenizer", None), "__len__", None)
    size = vocab() if vocab is not None else None
    for prompt in body.prompts:
        if isinstance(prompt, list) and any(t < 0 or (size is not None and t >= size) for t in prompt):
            raise BadRequestError(f"`prompt` holds token ids outside the vocabulary (0..{size - 1 if size else '?'})",
                                  param="prompt")


async def _gather_all(awaitables: list[Any]) -> list[Any]:
    """Like asyncio.gather, except that one failure (or a cancel) cancels the siblings at once."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def create_completion(ctx: ServerContext, body: CompletionRequest, request: Request) -> Response:
    served = ServedRequest(ctx, request, ROUTE, body, weight=request_limits.check_completion(ctx, body))
    model_name, adapter = ctx.models.resolve(body.model)
    ctx.check_top_logprobs(body.logprobs, "logprobs")
    _check_token_ids(ctx, body)
    echoes = _echo_texts(ctx, body)
    infer_requests, config = body.to_infer_requests(), body.to_request_config()
    try:
        started = await served.run(lambda: _gather_all(
            [ctx.engine.infer_async(r, config, adapter_request=adapter) for r in infer_requests]),
            keep_slot=body.stream)
    except ClientDisconnected:
        return served.client_closed()
    if body.stream:
        return _stream(served, body, model_name, started, echoes)
    return _respond(served, body, model_name, started, echoes)


def _respond(served: ServedRequest, body: CompletionRequest, model_name: str, responses: list[Any],
             echoes: list[str]) -> Response:
    choices: list[CompletionChoice] = []
    usage = UsageInfo()
    for i, (response, echo) in enumerate(zip(responses, echoes)):
        for choice in response.choices:
            logprobs, _ = legacy_logprobs(choice.logprobs, len(echo))
            choices.append(CompletionChoice(index=i * body.n + choice.index, text=echo + (choice.message.content or ""),
                                            finish_reason=choice.finish_reason, logprobs=logprobs))
        usage.prompt_tokens += response.usage.prompt_tokens
        usage.completion_tokens += response.usage.completion_tokens
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    payload = CompletionResponse(model=model_name, choices=choices, usage=usage).model_dump(mode="json")
    served.finish(usage, payload)
    return JSONResponse(payload)


async def _merge(streams: list[AsyncIterator[ChatCompletionStreamResponse]]
                 ) -> AsyncIterator[tuple[int, ChatCompletionStreamResponse]]:
    """(prompt index, chunk) from all streams as they come; closing the merge cancels every stream."""
    queue: asyncio.Queue[Union[tuple[int, Any], BaseException, None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[ChatCompletionStreamResponse]) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk))
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

    if len(streams) == 1:  # the usual single prompt: no queue hop per chunk
        try:
            async for chunk in streams[0]:
                yield 0, chunk
        finally:
            await streams[0].aclose()  # closing the merge aborts the generation at once
        return
    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _stream(served: ServedRequest, body: CompletionRequest, model_name: str,
            streams: list[AsyncIterator[ChatCompletionStreamResponse]], echoes: list[str]) -> Response:
    response_id = new_id("cmpl")
    created = int(time.time())
    offsets: dict[int, int] = {}
    texts: dict[int, str] = {}
    finish: dict[int, Optional[str]] = {}
    usages: dict[int, UsageInfo] = {}

    def chunk_of(index: int, text: str, finish_reason: Optional[str], logprobs: Any) -> bytes:
        texts[index] = texts.get(index, "") + text
        choice = CompletionChoice.model_construct(index=index, text=text, finish_reason=finish_reason,
                                                  logprobs=logprobs)  # our own values: no re-validation per token
        return as_json_event(CompletionResponse.model_construct(  # every field given: no default factories per token
            id=response_id, object="text_completion", created=created, model=model_name, choices=[choice], usage=None))

    async def events() -> AsyncIterator[bytes]:
        for i, echo in enumerate(echoes):
            for j in range(body.n):
                offsets[i * body.n + j] = len(echo)
                if echo:
                    yield chunk_of(i * body.n + j, echo, None, None)
        async for i, chunk in _merge(streams):
            if chunk.usage is not None:
                usages[i] = chunk.usage
            for c in chunk.choices:
                index = i * body.n + c.index
                if c.delta.content:
                    served.token_arrived()
                if c.finish_reason is not None:
                    finish[index] = c.finish_reason
                if not c.delta.content and c.finish_reason is None and c.logprobs is None:
                    continue  # the role-only first chunk has no completions counterpart
                logprobs, offsets[index] = legacy_logprobs(c.logprobs, offsets.get(index, 0))
                yield chunk_of(index, c.delta.content or "", c.finish_reason, logprobs)
        if body.include_usage:
            final = CompletionResponse(id=response_id, model=model_name, choices=[], usage=_total(usages))
            yield sse_event(final.model_dump_json())

    def finished() -> None:
        usage = _total(usages)
        choices = [{"index": k, "text": texts[k], "finish_reason": finish.get(k)} for k in sorted(texts)]
        served.finish(usage, {"id": response_id, "object": "text_completion", "model": model_name,
                              "choices": choices, "usage": usage.model_dump()})

    return served.event_stream(events(), finished, streams)  # type: ignore[return-value]


def _total(usages: dict[int, UsageInfo]) -> UsageInfo:
    prompt = sum(u.prompt_tokens for u in usages.values())
    completion = sum(u.completion_tokens for u in usages.values())
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
