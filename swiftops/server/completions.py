"""POST /v1/completions: raw prompts, no chat template (ms-swift wraps them in a chat turn; we don't).

Each prompt of the request runs as its own engine request (`InferRequest(prompt=...)`), all
concurrently; choice `i * n + j` is choice j of prompt i, as OpenAI numbers them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from swiftops.engines.outputs import SequenceOutput
from swiftops.protocol import (
    AdapterRequest,
    CompletionChoice,
    CompletionResponse,
    InferRequest,
    RequestConfig,
    UsageInfo,
    new_id,
)
from swiftops.protocol.openai_api import CompletionRequest
from swiftops.server.completion_stream import CompletionStreamShaper, legacy_logprobs
from swiftops.server.context import ServerContext
from swiftops.server.errors import ClientDisconnected
from swiftops.server.served_request import ServedRequest
from swiftops.server.sse import STREAM_DOC
from swiftops.server.validation import validate_completion

ROUTE = "/v1/completions"
router = APIRouter()


async def _gather_all(awaitables: list[Any]) -> list[Any]:
    """Like asyncio.gather, except that one failure (or a cancel) cancels the siblings at once."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


@router.post(
    ROUTE,
    summary="Text completion of a raw prompt (OpenAI legacy)",
    responses={200: {"model": CompletionResponse, "content": STREAM_DOC}},
)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    valid = validate_completion(ctx, body)
    served = ServedRequest(ctx, request, ROUTE, body, weight=valid.weight)
    config, adapter = valid.config, valid.adapter
    start = (
        (lambda: _gather_all([_first_output(ctx, r, config, adapter) for r in valid.requests]))
        if body.stream
        else (lambda: _gather_all([ctx.engine.infer_async(r, config, adapter_request=adapter) for r in valid.requests]))
    )
    try:
        started = await served.run(start, keep_slot=body.stream)
    except ClientDisconnected:
        return served.client_closed()
    if body.stream:
        return _stream(served, body, valid.model_name, started, valid.echoes)
    return _respond(served, body, valid.model_name, started, valid.echoes)


async def _first_output(
    ctx: ServerContext, request: InferRequest, config: RequestConfig, adapter: AdapterRequest | None
) -> tuple[AsyncIterator[SequenceOutput], SequenceOutput | None]:
    """The prompt's outputs and the first of them, already awaited: errors of the request itself (a prompt too
    long, an unknown adapter) get their own status code before the 200 goes out."""
    outputs = await ctx.engine.generate(request, config, adapter_request=adapter)
    return outputs, await anext(outputs, None)


async def _prepend(first: SequenceOutput | None, rest: AsyncIterator[SequenceOutput]) -> AsyncIterator[SequenceOutput]:
    try:
        if first is not None:
            yield first
            async for out in rest:
                yield out
    finally:
        await rest.aclose()  # type: ignore[attr-defined]  # closing aborts the generation at once


def _respond(
    served: ServedRequest, body: CompletionRequest, model_name: str, responses: list[Any], echoes: list[str]
) -> Response:
    choices: list[CompletionChoice] = []
    usage = UsageInfo()
    for i, (response, echo) in enumerate(zip(responses, echoes, strict=False)):
        for choice in response.choices:
            logprobs, _ = legacy_logprobs(choice.logprobs, len(echo))
            choices.append(
                CompletionChoice(
                    index=i * body.n + choice.index,
                    text=echo + (choice.message.content or ""),
                    finish_reason=choice.finish_reason,
                    logprobs=logprobs,
                )
            )
        usage.prompt_tokens += response.usage.prompt_tokens
        usage.completion_tokens += response.usage.completion_tokens
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    payload = CompletionResponse(model=model_name, choices=choices, usage=usage).model_dump(mode="json")
    served.finish(usage, payload)
    return JSONResponse(payload)


async def _merge(streams: list[AsyncIterator[SequenceOutput]]) -> AsyncIterator[tuple[int, SequenceOutput]]:
    """(prompt index, chunk) from all streams as they come; closing the merge cancels every stream."""
    queue: asyncio.Queue[tuple[int, Any] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[SequenceOutput]) -> None:
        try:
            async for chunk in stream:
                await queue.put((i, chunk))
            await queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await queue.put(exc)

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


def _stream(
    served: ServedRequest,
    body: CompletionRequest,
    model_name: str,
    started: list[tuple[AsyncIterator[SequenceOutput], SequenceOutput | None]],
    echoes: list[str],
) -> Response:
    shaper = CompletionStreamShaper(new_id("cmpl"), model_name, body.n, echoes)

    def shaped(i: int, out: SequenceOutput) -> bytes | None:
        if out.text:
            served.token_arrived()
        return shaper.event(i, out)

    async def events() -> AsyncIterator[bytes]:
        event: bytes | None
        for event in shaper.echo_events():
            yield event
        if len(started) == 1:  # the usual single prompt: its outputs straight from the engine, no merge per chunk
            outputs, out = started[0]
            while out is not None:
                event = shaped(0, out)
                if event is not None:
                    yield event
                out = await anext(outputs, None)
        else:
            async for i, out in _merge([_prepend(first, outputs) for outputs, first in started]):
                event = shaped(i, out)
                if event is not None:
                    yield event
        if body.include_usage:
            yield shaper.usage_event()

    def finished() -> None:
        served.finish(shaper.usage(), shaper.transcript())

    return served.event_stream(events(), finished, [outputs for outputs, _ in started])
