"""`InferClient`: the engine interface over HTTP, against `swiftops deploy` (or any OpenAI-compatible server).

    engine = InferClient(host="127.0.0.1", port=8000)          # same calls as PtEngine
    engine.infer([InferRequest(messages=[...])], RequestConfig(max_tokens=64), metrics=[InferStats()])

Responses are the local engines' types: a stream is read back into engine outputs (swiftops.engines.client_stream)
and shaped by the same code as PtEngine's, so usage arrives on its last chunk. Local image/video/audio paths are
sent as base64 data URIs, one connection pool is reused per event loop, and a server error raises
`InferClientError` carrying the server's message and HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import mimetypes
import os
import weakref
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import httpx

from swiftops.engines.base import InferEngine
from swiftops.engines.client_stream import chat_logprobs, read_outputs
from swiftops.engines.outputs import SequenceOutput
from swiftops.engines.response_builder import stream_response
from swiftops.metrics.stats import InferStats
from swiftops.protocol import (
    AdapterRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    CompletionResponse,
    InferRequest,
    RequestConfig,
    SwiftopsError,
    UsageInfo,
)
from swiftops.protocol.capabilities import require

# Keys of content parts (and top-level request fields) that hold media.
_MEDIA_KEYS = ("image", "video", "audio", "image_url", "video_url", "audio_url")
_REMOTE_PREFIXES = ("http://", "https://", "data:")


class InferClientError(SwiftopsError):
    """The server answered with an error (or could not be reached: status 503)."""

    def __init__(
        self, message: str, *, status: int, type: str | None = None, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        if type:
            self.type = type

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def media_to_uri(value: Any) -> Any:
    """A local file path or PIL image -> a base64 `data:` URI; URLs, data URIs and base64 pass through."""
    if hasattr(value, "save") and hasattr(value, "mode"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    if not isinstance(value, str) or value.startswith(_REMOTE_PREFIXES) or len(value) > 4096:
        return value
    path = os.path.expanduser(value[7:] if value.startswith("file://") else value)
    if not os.path.isfile(path):
        return value
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode("ascii")


def _encode_part(part: Any) -> Any:
    if not isinstance(part, dict):
        return part
    out = dict(part)
    for key in _MEDIA_KEYS:
        value = out.get(key)
        if isinstance(value, dict) and "url" in value:
            out[key] = {**value, "url": media_to_uri(value["url"])}
        elif value is not None:
            out[key] = media_to_uri(value)
    return out


def _encode_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        return {**message, "content": [_encode_part(p) for p in content]}
    return message


def _sampling_fields(config: RequestConfig) -> dict[str, Any]:
    """The request's fields the server reads (every field it does not take is refused here or by the server)."""
    if config.return_details:
        require("client", "return_details")
    fields = config.model_dump(
        exclude={"stream", "logprobs", "top_logprobs", "max_tokens", "return_details"}, exclude_defaults=True
    )
    if config.max_tokens is not None:
        fields["max_tokens"] = config.max_tokens
    if config.stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}  # so the last chunk carries usage, as locally
    return fields


def _wants_logprobs(config: RequestConfig) -> bool:
    return config.logprobs or bool(config.top_logprobs)


def _as_chat_response(completion: CompletionResponse) -> ChatCompletionResponse:
    """A /v1/completions answer in the chat shape the local engines return for a raw prompt."""
    choices = [
        ChatCompletionResponseChoice(
            index=c.index,
            message=ChatMessage(content=c.text),
            finish_reason=c.finish_reason,
            logprobs=chat_logprobs(c.logprobs),
        )
        for c in completion.choices
    ]
    return ChatCompletionResponse(
        id=completion.id, model=completion.model, choices=choices, usage=completion.usage or UsageInfo()
    )


class InferClient(InferEngine):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 86400.0,
        *,
        max_connections: int = 64,
        max_retries: int = 3,
    ) -> None:
        """`base_url` (e.g. http://host:8000/v1) wins over host/port; `max_retries` retries 429 answers."""
        url = (base_url or f"http://{host}:{port}/v1").rstrip("/")
        if urlparse(url).path in ("", "/"):
            url += "/v1"
        self.base_url = url
        self.api_key = api_key
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 30.0))
        self.limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.max_retries = max_retries
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # httpx's async pools belong to one event loop: one pool per loop that uses this client.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._sync_client: httpx.Client | None = None
        self._models: list[str] | None = None

    # ---- models ------------------------------------------------------------------------------
    @property
    def models(self) -> list[str]:
        """The server's model names: the base model first, then its LoRA adapters."""
        if self._models is None:
            if self._sync_client is None:
                self._sync_client = httpx.Client(headers=self._headers, timeout=self.timeout)
            response = self._request_sync("GET", "/models")
            self._models = [m["id"] for m in response.json()["data"]]
        return list(self._models)

    @property
    def model_name(self) -> str:  # type: ignore[override]
        return self.models[0]

    @property
    def adapter_names(self) -> list[str]:
        return self.models[1:]

    def _request_sync(self, method: str, path: str) -> httpx.Response:
        assert self._sync_client is not None
        try:
            response = self._sync_client.request(method, self.base_url + path)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise self._error(response.status_code, response.content)
        return response

    # ---- HTTP plumbing -----------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(headers=self._headers, timeout=self.timeout, limits=self.limits)
            self._async_clients[loop] = client
        return client

    def _unreachable(self, exc: Exception) -> InferClientError:
        return InferClientError(
            f"cannot reach the server at {self.base_url} ({type(exc).__name__}: {exc}); "
            f"is `swiftops deploy` running there?",
            status=503,
            code="unreachable",
        )

    @staticmethod
    def _error(status: int, content: bytes) -> InferClientError:
        try:
            error = json.loads(content)["error"]
            return InferClientError(
                str(error.get("message")),
                status=status,
                type=error.get("type"),
                param=error.get("param"),
                code=error.get("code"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            text = content.decode("utf-8", "replace")[:500]
            return InferClientError(f"the server answered {status}: {text}", status=status)

    async def _open(self, path: str, body: dict[str, Any], stream: bool) -> httpx.Response:
        """POST, retrying 429s after their Retry-After; the caller closes a streamed response."""
        client = self._client()
        for attempt in range(self.max_retries + 1):
            try:
                request = client.build_request("POST", self.base_url + path, json=body)
                response = await client.send(request, stream=stream)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None
            if response.status_code == 429 and attempt < self.max_retries:
                await response.aclose()
                await asyncio.sleep(float(response.headers.get("retry-after", "1") or 1))
                continue
            if response.status_code >= 400:
                content = await response.aread()
                await response.aclose()
                raise self._error(response.status_code, content)
            return response
        raise AssertionError("unreachable")

    async def _events(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        response = await self._open(path, body, stream=True)
        try:  # closing (or cancelling) this generator drops the connection: the server aborts the generation
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]
                    raise InferClientError(
                        str(error.get("message")), status=500, type=error.get("type"), code=error.get("code")
                    )
                yield event
        finally:
            await response.aclose()

    # ---- the engine interface ----------------------------------------------------------------
    def infer(
        self,
        requests: list[InferRequest],
        request_config: RequestConfig | None = None,
        metrics: list[InferStats] | None = None,
        *,
        model: str | None = None,
        adapter_request: AdapterRequest | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        """ms-swift's `engine.infer(requests, config, model=models[1])`: `model` names the served model or
        adapter that answers (one of `engine.models`); default: the base model."""
        if model is not None:
            if adapter_request is not None and adapter_request.name != model:
                raise ValueError(f"model={model!r} and adapter_request={adapter_request.name!r} disagree; pass one")
            adapter_request = AdapterRequest(model)
        return super().infer(requests, request_config, metrics, adapter_request=adapter_request, **kwargs)

    async def infer_async(
        self,
        request: InferRequest,
        request_config: RequestConfig | None = None,
        *,
        adapter_request: AdapterRequest | None = None,
        model: str | None = None,
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionStreamResponse]:
        """`model` (or `adapter_request.name`) picks the served model or adapter; default: the base model."""
        config = request_config or RequestConfig()
        model = await self._model_for(adapter_request, model)
        path, body = self._body(request, config, model)
        if config.stream:  # chunks shaped as every local engine shapes them: usage on the last one
            outputs = read_outputs(self._events(path, body), config.n, completion=path == "/completions")
            return stream_response(outputs, config.n, model, tools=False, want_logprobs=_wants_logprobs(config))
        response = await self._open(path, body, stream=False)
        if path == "/completions":
            return _as_chat_response(CompletionResponse.model_validate_json(response.content))
        return ChatCompletionResponse.model_validate_json(response.content)

    async def generate(
        self, request: InferRequest, config: RequestConfig, *, adapter_request: AdapterRequest | None = None
    ) -> AsyncIterator[SequenceOutput]:
        path, body = self._body(
            request, config.model_copy(update={"stream": True}), await self._model_for(adapter_request, None)
        )
        return read_outputs(self._events(path, body), config.n, completion=path == "/completions")

    async def _model_for(self, adapter_request: AdapterRequest | None, model: str | None) -> str:
        if model is not None:
            return model
        return adapter_request.name if adapter_request is not None else await self._base_model()

    async def _base_model(self) -> str:
        if self._models is None:
            return await asyncio.to_thread(lambda: self.model_name)
        return self._models[0]

    @staticmethod
    def _body(request: InferRequest, config: RequestConfig, model: str) -> tuple[str, dict[str, Any]]:
        """The route and body for a request: messages go to /v1/chat/completions, a raw prompt to /v1/completions
        (no chat template)."""
        if request.prompt is not None:
            # An explicit null: /v1/completions defaults to 16 tokens (OpenAI's rule), the local engines to
            # the context; null asks the server for the engine's default, as locally.
            body: dict[str, Any] = {"model": model, "prompt": request.prompt, "max_tokens": None}
            body.update(_sampling_fields(config))
            if _wants_logprobs(config):
                body["logprobs"] = config.top_logprobs or 0
            return "/completions", body
        body = {"model": model, "messages": [_encode_message(m) for m in request.messages], **_sampling_fields(config)}
        for key in ("images", "videos", "audios"):
            items = getattr(request, key)
            if items:
                body[key] = [media_to_uri(item) for item in items]
        if request.tools:
            body["tools"] = request.tools
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
        if _wants_logprobs(config):
            body["logprobs"] = True
            if config.top_logprobs is not None:
                body["top_logprobs"] = config.top_logprobs
        return "/chat/completions", body

    async def embed_async(self, inputs: list[Any]) -> list[list[float]]:
        response = await self._open("/embeddings", {"model": await self._base_model(), "input": inputs}, stream=False)
        return [item["embedding"] for item in sorted(response.json()["data"], key=lambda d: d["index"])]

    def close(self) -> None:
        if self._sync_client is not None:
            self._sync_client.close()
        for loop, client in list(self._async_clients.items()):
            if loop.is_closed() or client.is_closed:
                continue
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if loop is running:
                loop.create_task(client.aclose())
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=10)
            else:
                loop.run_until_complete(client.aclose())
        self._async_clients.clear()
