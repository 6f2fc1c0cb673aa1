"""`ServedRequest`: the bookkeeping of one request that passed validation (swiftops.server.validation), shared by
chat, completions and embeddings: its admission slot, its media budget, latency metrics, token counts for the
access log, verbose body logs and --result_path.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import Response

from swiftops.media.budget import MediaBudget, request_media_budget
from swiftops.protocol import SwiftopsError, UsageInfo
from swiftops.protocol.openai_api import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from swiftops.server.context import ServerContext
from swiftops.server.errors import ClientDisconnected, error_body, logger
from swiftops.server.request_log import log_body
from swiftops.server.sse import DONE, EventStreamResponse, sse_event, until_disconnected
from swiftops.template.chat_template import split_special_tokens

T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for "the client went away first"


def media_budget(ctx: ServerContext) -> MediaBudget:
    """A fresh per-request budget for the decoded size and tokens of the request's media (the media loader holds
    each request to it), with a token estimate where the model's processor is Qwen-style."""
    budget = MediaBudget(max_decoded_bytes=ctx.settings.max_media_bytes_decoded, max_tokens=ctx.engine.max_model_len)
    encoder = ctx.engine.encoder
    if encoder is None:
        return budget
    # Processors differ by model: read the Qwen-VL image processor's geometry where it has one.
    image_processor = getattr(encoder.processor, "image_processor", None)
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    if isinstance(patch, int) and isinstance(merge, int):
        size = dict(getattr(image_processor, "size", None) or {})
        budget.pixels_per_token = (patch * merge) ** 2
        budget.image_max_pixels = encoder.limits.max_pixels or size.get("longest_edge")
        budget.video_max_pixels = encoder.limits.video_max_pixels or size.get("longest_edge")
        budget.frames_per_token = int(getattr(image_processor, "temporal_patch_size", 2) or 2)
    return budget


class ServedRequest:
    def __init__(
        self,
        ctx: ServerContext,
        request: Request,
        route: str,
        body: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
        weight: int = 1,
    ) -> None:
        self.weight = weight  # sequences (prompts x n): what admission counts
        self.ctx = ctx
        self.request = request
        self.route = route
        self.body = body
        self.state = request.state
        self.request_id: str = getattr(request.state, "request_id", "-")
        self.arrival = time.perf_counter()
        self._last_token_at: float | None = None
        self._holds_slot = False
        self.state.user = body.user
        if ctx.settings.verbose:
            log_body(self.request_id, "request", body.model_dump(exclude_none=True))

    async def until_disconnected(self, work: Awaitable[T]) -> T:
        """Await `work`; a client that disconnects first cancels it (ClientDisconnected)."""
        return await until_disconnected(self.request.receive, work)

    async def admit(self) -> None:
        """Take the request's admission slots, one per sequence (429 when the queue is full), giving up if the
        client leaves while queued."""
        queue_time = await self.until_disconnected(self.ctx.admission.acquire(self.weight))
        self._holds_slot = True
        self.ctx.metrics.request_queue_time.observe(queue_time)

    async def run(self, work: Callable[[], Awaitable[T]], *, keep_slot: bool = False) -> T:
        """Take an admission slot, then await `work()` (which starts the generation) unless the client leaves.

        The slot goes back when `work` fails or the client leaves, and when it returns unless `keep_slot`
        (a stream holds it until its last chunk). A client that left raises ClientDisconnected, marked 499:
        answer it with `client_closed()`. `work()` runs with this request's media budget and special-token
        policy (context variables the engine's worker threads see).
        """
        request_media_budget.set(media_budget(self.ctx))
        split_special_tokens.set(self.ctx.settings.split_special_tokens)
        try:
            await self.admit()
            try:
                result = await self.until_disconnected(work())
            except BaseException:
                self.release()
                raise
        except ClientDisconnected:
            self.mark_disconnected()
            raise
        if not keep_slot:
            self.release()
        return result

    def client_closed(self) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    def release(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.ctx.admission.release(self.weight)

    def token_arrived(self) -> None:
        now = time.perf_counter()
        if self._last_token_at is None:
            self.ctx.metrics.time_to_first_token.observe(now - self.arrival)
        else:
            self.ctx.metrics.inter_token_latency.observe(now - self._last_token_at)
        self._last_token_at = now

    def mark_disconnected(self) -> None:
        self.state.outcome_status = CLIENT_CLOSED_REQUEST

    def mark_failed(self, status: int) -> None:
        """For a stream that failed after its 200 header went out: log and count the real outcome."""
        self.state.outcome_status = status

    def finish(self, usage: UsageInfo | dict[str, int] | None, response: dict[str, Any] | None) -> None:
        """Record a request that got its full answer (`usage` as the model or, from a stream, as its dict)."""
        self.ctx.metrics.e2e_request_latency.observe(time.perf_counter() - self.arrival)
        if usage is not None:
            counts = usage if isinstance(usage, dict) else usage.model_dump()
            prompt, completion = counts["prompt_tokens"], counts["completion_tokens"]
            self.state.usage = {"prompt_tokens": prompt, "completion_tokens": completion}
            self.ctx.metrics.record_tokens(prompt, completion)
        if self.ctx.settings.verbose and response is not None:
            log_body(self.request_id, "response", response)
        if self.ctx.results is not None and response is not None:
            self.ctx.results.write(self.request_id, self.route, self.body.model_dump(exclude_none=True), response)

    def event_stream(
        self, events: AsyncIterator[bytes], finished: Callable[[], None], engine_streams: list[AsyncIterator[Any]]
    ) -> EventStreamResponse:
        """The SSE response for `events` (framed chunks): errors in-band, `[DONE]` last. However the stream
        ends, the engine's streams are closed (an engine may hold batch slots for a stream nobody started
        reading) and the admission slot is released; `finished()` runs only for a stream that completed."""
        completed = False

        async def framed() -> AsyncIterator[bytes]:
            nonlocal completed
            try:
                async for event in events:
                    yield event
                completed = True
            except SwiftopsError as exc:  # the 200 is out already: report in-band, as vLLM does
                self.mark_failed(exc.status)
                yield sse_event(exc.to_response().model_dump_json())
            except Exception as exc:
                logger.exception("stream %s failed", self.request_id)
                self.mark_failed(500)
                yield sse_event(json.dumps(error_body(500, f"internal error while streaming: {type(exc).__name__}")))
            finally:
                if not completed:
                    await events.aclose()  # type: ignore[attr-defined]  # aborts the generation now
            # Generation is over: its slots go back now, even if a slow reader keeps the socket open a while.
            self.release()
            yield DONE

        async def on_close(disconnected: bool) -> None:
            try:
                for stream in engine_streams:
                    aclose = getattr(stream, "aclose", None)
                    if aclose is not None:
                        await aclose()  # a client gone early aborts the generation now, not at GC
            finally:
                self.release()
            if disconnected:
                self.mark_disconnected()
            elif completed:
                finished()

        return EventStreamResponse(framed(), on_close)
