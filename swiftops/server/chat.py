"""POST /v1/chat/completions: OpenAI chat request -> engine -> JSON or server-sent events."""
from __future__ import annotations

from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from swiftops.protocol import ChatCompletionResponse, ChatCompletionStreamResponse, UsageInfo
from swiftops.protocol.openai_api import ChatCompletionRequest
from swiftops.server import request_limits
from swiftops.server.context import ServerContext
from swiftops.server.errors import ClientDisconnected
from swiftops.server.served_request import ServedRequest
from swiftops.server.sse import as_json_event, sse_event

ROUTE = "/v1/chat/completions"


class StreamTranscript:
    """The streamed choices put back together, for --result_path and verbose logs."""

    def __init__(self) -> None:
        self.texts: dict[int, str] = {}
        self.finish: dict[int, Optional[str]] = {}
        self.tool_calls: dict[int, list[Any]] = {}

    def add(self, chunk: ChatCompletionStreamResponse) -> None:
        for choice in chunk.choices:
            self.texts[choice.index] = self.texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.delta.tool_calls:
                self.tool_calls.setdefault(choice.index, []).extend(c.model_dump() for c in choice.delta.tool_calls)
            if choice.finish_reason is not None:
                self.finish[choice.index] = choice.finish_reason

    def as_response(self, response_id: str, model: str, usage: Optional[UsageInfo]) -> dict[str, Any]:
        choices = [{"index": i, "message": {"role": "assistant", "content": self.texts[i],
                                            **({"tool_calls": self.tool_calls[i]} if i in self.tool_calls else {})},
                    "finish_reason": self.finish.get(i)} for i in sorted(self.texts)]
        return {"id": response_id, "object": "chat.completion", "model": model, "choices": choices,
                "usage": usage.model_dump() if usage else None}


async def create_chat_completion(ctx: ServerContext, body: ChatCompletionRequest, request: Request) -> Response:
    served = ServedRequest(ctx, request, ROUTE, body, weight=request_limits.check_chat(ctx, body))
    model_name, adapter = ctx.models.resolve(body.model)
    ctx.check_top_logprobs(body.top_logprobs, "top_logprobs")
    infer_request, config = body.to_infer_request(), body.to_request_config()
    if body.stream:
        return await _stream(ctx, served, body, model_name, infer_request, config, adapter)
    try:
        response: ChatCompletionResponse = await served.run(
            lambda: ctx.engine.infer_async(infer_request, config, adapter_request=adapter))
    except ClientDisconnected:
        return served.client_closed()
    response.model = model_name  # echo the requested name, never the checkpoint path
    payload = response.model_dump(mode="json")
    served.finish(response.usage, payload)
    return JSONResponse(payload)


async def _stream(ctx: ServerContext, served: ServedRequest, body: ChatCompletionRequest, model_name: str,
                  infer_request: Any, config: Any, adapter: Any) -> Response:
    async def start() -> tuple[Any, Any]:
        stream = await ctx.engine.infer_async(infer_request, config, adapter_request=adapter)
        # The first chunk is awaited before the 200 goes out, so errors of the request itself
        # (a prompt too long, an unknown adapter) still get their own status code.
        return stream, await anext(stream, None)

    try:
        stream, first = await served.run(start, keep_slot=True)
    except ClientDisconnected:
        return served.client_closed()

    transcript = StreamTranscript()
    response_id = first.id if first is not None else ""
    usage: list[UsageInfo] = []

    async def events() -> AsyncIterator[bytes]:
        chunk = first
        while chunk is not None:
            if any(c.delta.content or c.delta.tool_calls for c in chunk.choices):
                served.token_arrived()
            if chunk.usage is not None:
                usage.append(chunk.usage)
            # OpenAI sends usage only in the extra last chunk, and only with include_usage.
            chunk.usage, chunk.model, chunk.id = None, model_name, response_id
            transcript.add(chunk)
            if chunk.choices:
                yield as_json_event(chunk)
            chunk = await anext(stream, None)
        if body.include_usage and usage:
            final = ChatCompletionStreamResponse(id=response_id, model=model_name, choices=[], usage=usage[-1])
            yield sse_event(final.model_dump_json())

    def finished() -> None:
        last = usage[-1] if usage else None
        served.finish(last, transcript.as_response(response_id, model_name, last))

    return served.event_stream(events(), finished, [stream])  # type: ignore[return-value]
