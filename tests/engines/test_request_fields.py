"""Every `RequestConfig` field is mapped or refused by every backend, as the capability table declares.

For each field, each backend's real mapping runs twice, on a request without and with the field set: the
result must differ (the field reaches the library, the sampler or the server), or, where the table's row says
"no" for that backend, the mapping must refuse it. A new field fails here until it has a row in
`REQUEST_FIELDS`, a sample value below, and a mapping (or refusal) in every backend.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from swiftops.engines.client import InferClient
from swiftops.engines.lmdeploy import args as lmdeploy_args
from swiftops.engines.pt.request_plan import plan_request
from swiftops.engines.vllm import args as vllm_args
from swiftops.protocol import ChatCompletionResponse, InferRequest, RequestConfig, UnsupportedError
from swiftops.protocol.capabilities import REQUEST_BACKENDS, REQUEST_FIELDS, RESPONSE_FIELDS, support
from swiftops.protocol.sampling import effective_config
from swiftops.protocol.settings import GenerationSettings
from swiftops.protocol.structured_output import output_constraint

# One non-default value per field; each is valid on its own.
SAMPLES = {
    "max_tokens": 5,
    "temperature": 0.7,
    "top_k": 5,
    "top_p": 0.5,
    "min_p": 0.1,
    "repetition_penalty": 1.3,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "stop": ["x"],
    "stop_token_ids": [3],
    "ignore_eos": True,
    "logit_bias": {3: 5.0},
    "seed": 3,
    "stream": True,
    "logprobs": True,
    "top_logprobs": 2,
    "n": 2,
    "num_beams": 2,
    "return_details": True,
    "response_format": {"type": "json_object"},
    "guided_json": {"type": "object"},
    "guided_regex": "a+",
    "guided_choice": ["a", "b"],
    "guided_grammar": 'root ::= "a"',
}
PROMPT_LEN, MAX_MODEL_LEN = 10, 60
REQUEST = InferRequest(messages=[{"role": "user", "content": "hi"}])


def _effective(config: RequestConfig) -> RequestConfig:
    return effective_config(config, GenerationSettings())


def _pt(config: RequestConfig):
    config = _effective(config)
    return plan_request(config, MAX_MODEL_LEN - PROMPT_LEN, output_constraint(config))


def _vllm(config: RequestConfig):
    config = _effective(config)
    return vllm_args.sampling_params_kwargs(config, PROMPT_LEN, MAX_MODEL_LEN, output_constraint(config))


def _lmdeploy(engine: str):
    def mapping(config: RequestConfig):
        config = _effective(config)
        return lmdeploy_args.map_request(config, PROMPT_LEN, MAX_MODEL_LEN, output_constraint(config), engine)

    return mapping


def _client(config: RequestConfig) -> dict:
    """The JSON body InferClient sends (httpx's transport answers in place of a server)."""
    bodies: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        if bodies[-1].get("stream"):
            return httpx.Response(200, text="data: [DONE]\n\n", headers={"content-type": "text/event-stream"})
        return httpx.Response(200, text=ChatCompletionResponse(model="m", choices=[]).model_dump_json())

    async def send() -> None:
        client = InferClient(base_url="http://server.test/v1")
        client._async_clients[asyncio.get_running_loop()] = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        result = await client.infer_async(REQUEST, config, model="m")
        if config.stream:
            async for _ in result:
                pass

    asyncio.run(send())
    return bodies[0]


MAPPINGS = {
    ("pt", None): _pt,
    ("vllm", None): _vllm,
    ("lmdeploy", "turbomind"): _lmdeploy("turbomind"),
    ("lmdeploy", "pytorch"): _lmdeploy("pytorch"),
    ("client", None): _client,
}


def test_every_request_field_is_in_the_capability_table_and_has_a_sample():
    fields = set(RequestConfig.model_fields)
    assert fields - set(REQUEST_FIELDS) == set(), "declare the new RequestConfig field in capabilities.REQUEST_FIELDS"
    assert set(REQUEST_FIELDS) - fields == set()
    assert fields - set(SAMPLES) == set(), "give the new field a sample value in this test"
    assert {backend for backend, _ in MAPPINGS} == set(REQUEST_BACKENDS)


@pytest.mark.parametrize("backend, engine", list(MAPPINGS))
@pytest.mark.parametrize("field", sorted(RequestConfig.model_fields))
def test_every_backend_maps_or_refuses_every_field(field, backend, engine):
    mapping = MAPPINGS[(backend, engine)]
    config = RequestConfig(**{field: SAMPLES[field]})
    feature = REQUEST_FIELDS[field]
    cell = support(backend, feature, engine) if feature is not None else None
    if cell is not None and not cell.supported:
        with pytest.raises(UnsupportedError, match=feature):
            mapping(config)
        return
    if field in RESPONSE_FIELDS and backend in ("vllm", "lmdeploy"):
        mapping(config)  # taken; the engine shapes chunks or one response from the same outputs
        return
    assert mapping(config) != mapping(RequestConfig()), f"{backend} ignores {field}"
