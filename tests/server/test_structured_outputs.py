"""Structured outputs through the real `swiftops deploy` server (pt backend, tiny random model) with the official
`openai` client: response_format json_schema, `beta.chat.completions.parse` with a pydantic model, vLLM's guided_*
fields as extra_body, and a schema that cannot compile as a 400 carrying xgrammar's reason."""
from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MESSAGES = [{"role": "user", "content": "Describe a pet."}]
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "kind": {"enum": ["cat", "dog"]},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2},
    "owner": {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["age"], "additionalProperties": False}},
    "required": ["name", "kind", "tags", "owner"], "additionalProperties": False}


class Owner(BaseModel):
    age: int = Field(ge=0, le=99)
    verified: bool


class Pet(BaseModel):
    name: str = Field(max_length=8)
    kind: Literal["cat", "dog", "bird"]
    tags: list[Literal["small", "big"]] = Field(max_length=2)
    owner: Owner


@pytest.fixture()
def client(server, api_key):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=60) as c:
        yield c


def test_response_format_json_schema_with_the_openai_client(client, served_name):
    response = client.chat.completions.create(
        model=served_name, messages=MESSAGES, max_tokens=120, temperature=1.0, n=4,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}})
    assert len(response.choices) == 4
    for choice in response.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    streamed = client.chat.completions.create(
        model=served_name, messages=MESSAGES, max_tokens=120, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}})
    chunks = list(streamed)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks)), SCHEMA)


def test_parse_with_a_pydantic_model(client, served_name):
    completion = client.beta.chat.completions.parse(model=served_name, messages=MESSAGES, max_tokens=150,
                                                    temperature=0, response_format=Pet)
    pet = completion.choices[0].message.parsed
    assert isinstance(pet, Pet) and isinstance(pet.owner, Owner)
    assert completion.choices[0].finish_reason == "stop"
    assert Pet.model_validate_json(completion.choices[0].message.content) == pet


def test_guided_fields_as_extra_body(client, served_name):
    choice = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=10, temperature=1.0,
                                            extra_body={"guided_choice": ["positive", "negative"]})
    assert choice.choices[0].message.content in ("positive", "negative")
    regex = client.completions.create(model=served_name, prompt="Code:", max_tokens=12, temperature=1.0,
                                      extra_body={"guided_regex": "[A-Z]{3}-[0-9]{3}"})
    assert regex.choices[0].text[:3].isupper() and regex.choices[0].text[3] == "-" and len(regex.choices[0].text) == 7
    assert regex.choices[0].finish_reason == "stop"


def test_forced_tool_call_through_the_server(client, served_name):
    tool = {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["n"],
        "additionalProperties": False}}}
    response = client.chat.completions.create(model=served_name, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=40, temperature=1.0, tools=[tool],
                                              tool_choice={"type": "function", "function": {"name": "pick"}})
    assert response.choices[0].finish_reason == "tool_calls"
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "pick" and 1 <= json.loads(call.function.arguments)["n"] <= 9


def test_a_schema_that_cannot_compile_is_a_400_with_the_reason(server, api_key, served_name, client):
    body = {"model": served_name, "messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {
        "name": "bad", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/nowhere"}}}}}}
    response = httpx.post(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                          json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert "cannot be compiled into a grammar" in error["message"] and "nowhere" in error["message"]
    with pytest.raises(openai.BadRequestError, match="guided_regex cannot be compiled"):
        client.chat.completions.create(model=served_name, messages=MESSAGES, extra_body={"guided_regex": "(a"})
    with pytest.raises(openai.BadRequestError, match="2 ways"):
        client.chat.completions.create(model=served_name, messages=MESSAGES, response_format={"type": "json_object"},
                                       extra_body={"guided_regex": "a"})


def test_infer_client_sends_the_request_config_fields(server, api_key):
    from swiftops import InferClient, InferRequest, RequestConfig

    engine = InferClient(base_url=server.url + "/v1", api_key=api_key)
    try:
        request = InferRequest(messages=MESSAGES)
        (choice,) = engine.infer([request], RequestConfig(max_tokens=10, guided_choice=["left", "right"]))
        assert choice.choices[0].message.content in ("left", "right")
        (pet,) = engine.infer([request], RequestConfig(max_tokens=120, temperature=0, guided_json=SCHEMA))
        jsonschema.validate(json.loads(pet.choices[0].message.content), SCHEMA)
    finally:
        engine.close()
