"""POST /v1/chat/completions: OpenAI chat request -> engine -> JSON or server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from swiftops.protocol import ChatCompletionResponse, new_id
from swiftops.protocol.openai_api import ChatCompletionRequest
from swiftops.server.chat_stream import ChatStreamShaper
from swiftops.server.context import ServerContext
from swiftops.server.errors import ClientDisconnected
from swiftops.server.served_request import ServedRequest
from swiftops.server.sse import STREAM_DOC
from swiftops.server.validation import ValidatedRequest, validate_chat

ROUTE = "/v1/chat/completions"
router = APIRouter()


@router.post(
    ROUTE, summary="Chat completion (OpenAI)", responses={200: {"model": ChatCompletionResponse, "content": STREAM_DOC}}
)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    valid = validate_chat(ctx, body)
    served = ServedRequest(ctx, request, ROUTE, body, weight=valid.weight)
    assert valid.config is not None  # narrows for mypy: validate_chat always builds the config
    if body.stream:
        return await _stream(ctx, served, body, valid)
    try:
        response = await served.run(
            lambda: ctx.engine.infer_async(valid.request, valid.config, adapter_request=valid.adapter)
        )
    except ClientDisconnected:
        return served.client_closed()
    assert isinstance(response, ChatCompletionResponse)  # narrows for mypy: body.stream is off, one whole response
    response.model = valid.model_name  # echo the requested name, never the checkpoint path
    payload = response.model_dump(mode="json")
    served.finish(response.usage, payload)
    return JSONResponse(payload)


async def _stream(
    ctx: ServerContext, served: ServedRequest, body: ChatCompletionRequest, valid: ValidatedRequest
) -> Response:
    infer_request, config = valid.request, valid.config

    async def start() -> tuple[Any, Any]:
        outputs = await ctx.engine.generate(infer_request, config, adapter_request=valid.adapter)
        # The first output is awaited before the 200 goes out, so errors of the request itself
        # (a prompt too long, an unknown adapter) still get their own status code.
        return outputs, await anext(outputs, None)

    try:
        outputs, first = await served.run(start, keep_slot=True)
    except ClientDisconnected:
        return served.client_closed()
    tools = bool(infer_request.tools) and infer_request.tool_choice != "none"
    shaper = ChatStreamShaper(new_id("chatcmpl"), valid.model_name, config.n, tools)

    async def events() -> AsyncIterator[bytes]:
        out = first
        while out is not None:
            if out.text:
                served.token_arrived()
            event = shaper.event(out)
            if event is not None:
                yield event
            out = await anext(outputs, None)
        if body.include_usage:
            yield shaper.usage_event()

    def finished() -> None:
        served.finish(shaper.usage(), shaper.transcript())

    return served.event_stream(events(), finished, [outputs])
