"""POST /v1/embeddings: `engine.embed_async` for embedding models; 400 with a clear message otherwise."""

from __future__ import annotations

import base64
import struct

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from swiftops.protocol import EmbeddingData, EmbeddingResponse, UsageInfo
from swiftops.protocol.openai_api import EmbeddingRequest
from swiftops.server.context import ServerContext
from swiftops.server.errors import ClientDisconnected
from swiftops.server.served_request import ServedRequest
from swiftops.server.validation import check_dimensions, validate_embedding

ROUTE = "/v1/embeddings"
router = APIRouter()


def _encode(vector: list[float], encoding_format: str) -> object:
    if encoding_format == "base64":  # little-endian float32, as OpenAI's clients decode it
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return [float(v) for v in vector]


def _prompt_tokens(ctx: ServerContext, inputs: list) -> int:
    tokenizer = ctx.engine.tokenizer
    if tokenizer is None:
        return 0
    return sum(len(i) if isinstance(i, list) else len(tokenizer.encode(i)) for i in inputs)


@router.post(ROUTE, summary="Embeddings (embedding models only)", responses={200: {"model": EmbeddingResponse}})
async def create_embedding(body: EmbeddingRequest, request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    model_name = validate_embedding(ctx, body).model_name
    served = ServedRequest(ctx, request, ROUTE, body)
    try:
        vectors = await served.run(lambda: ctx.engine.embed_async(body.inputs))
    except ClientDisconnected:
        return served.client_closed()
    data = []
    for i, vector in enumerate(vectors):
        vector = list(vector)
        check_dimensions(body.dimensions, len(vector))
        if body.dimensions is not None:
            vector = vector[: body.dimensions]
        data.append(EmbeddingData(index=i, embedding=_encode(vector, body.encoding_format)))
    prompt_tokens = _prompt_tokens(ctx, body.inputs)
    usage = UsageInfo(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)
    payload = EmbeddingResponse(model=model_name, data=data, usage=usage).model_dump(mode="json")
    served.finish(usage, payload)
    return JSONResponse(payload)
