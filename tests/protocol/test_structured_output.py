"""One output constraint per request, from response_format, vLLM's guided_* fields or a forced tool_choice."""
from __future__ import annotations

import json

import pytest

from swiftops.protocol import BadRequestError, InferRequest, RequestConfig
from swiftops.protocol.openai_api import ChatCompletionRequest, CompletionRequest
from swiftops.protocol.structured_output import MAX_CONSTRAINT_BYTES, output_constraint, tool_call_constraint

SCHEMA = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": SCHEMA}}
OTHER = {"type": "function", "function": {"name": "g", "strict": True}}


def test_each_source_gives_its_kind():
    assert output_constraint(RequestConfig()) is None
    assert output_constraint(RequestConfig(response_format={"type": "text"})) is None
    assert output_constraint(RequestConfig(response_format={"type": "json_object"})).kind == "json_object"
    strict = output_constraint(RequestConfig(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": SCHEMA, "strict": True}}))
    assert (strict.kind, strict.strict, strict.schema) == ("json_schema", True, SCHEMA)
    assert list(strict.schema["properties"]) == ["b", "a"]  # the output's property order is the schema's
    loose = output_constraint(RequestConfig(guided_json=json.dumps(SCHEMA)))
    assert (loose.kind, loose.strict, loose.param, loose.key[1]) == ("json_schema", False, "guided_json", strict.source)
    assert output_constraint(RequestConfig(guided_regex="a+")).source == "a+"
    choice = output_constraint(RequestConfig(guided_choice=["a.b", "c|d", "(x)"]))
    assert choice.choices == ["a.b", "c|d", "(x)"] and choice.choice_regex == r"(a\.b|c\|d|\(x\))"
    assert output_constraint(RequestConfig(guided_grammar='root ::= "x"')).kind == "grammar"


@pytest.mark.parametrize("fields, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema.schema"),
    ({"response_format": {"type": "json_schema"}}, "json_schema.schema"),
    ({"guided_json": "{not json"}, "guided_json is not valid JSON"),
    ({"guided_json": "[1, 2]"}, "JSON Schema object"),
    ({"guided_regex": ""}, "non-empty string"),
    ({"guided_choice": []}, "non-empty list"),
    ({"guided_choice": ["a", ""]}, "non-empty strings"),
    ({"guided_grammar": "x" * (MAX_CONSTRAINT_BYTES + 1)}, "larger than 64 KiB"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, r"constrains its output 2 ways \(guided_regex, guided_choice\)"),
    ({"response_format": {"type": "json_object"}, "guided_grammar": "g"}, "2 ways"),
])
def test_malformed_or_conflicting_constraints_are_400s(fields, message):
    with pytest.raises(BadRequestError, match=message):
        output_constraint(RequestConfig(**fields))


def test_forced_tool_calls_become_the_tools_schema():
    assert tool_call_constraint([TOOL], "auto") is None and tool_call_constraint([TOOL], "none") is None
    assert tool_call_constraint(None, "required") is None
    named = tool_call_constraint([TOOL, OTHER], {"type": "function", "function": {"name": "f"}})
    assert named.tool_call and not named.strict
    assert named.schema == {"type": "object", "properties": {"name": {"const": "f"}, "arguments": SCHEMA},
                            "required": ["name", "arguments"], "additionalProperties": False}
    required = tool_call_constraint([TOOL, OTHER], "required")
    assert [s["properties"]["name"]["const"] for s in required.schema["anyOf"]] == ["f", "g"]
    assert required.schema["anyOf"][1]["properties"]["arguments"] == {"type": "object"}  # no parameters: any object
    assert tool_call_constraint([OTHER], "required").strict  # every candidate strict: compiled strictly
    with pytest.raises(BadRequestError, match="names function 'h', which is not among the tools"):
        tool_call_constraint([TOOL], {"type": "function", "function": {"name": "h"}})
    with pytest.raises(BadRequestError, match="each tool needs"):
        tool_call_constraint([{"type": "function"}], "required")
    request = InferRequest(messages=[{"role": "user", "content": "hi"}], tools=[TOOL], tool_choice="required")
    with pytest.raises(BadRequestError, match=r"2 ways \(response_format, tool_choice\)"):
        output_constraint(RequestConfig(response_format={"type": "json_object"}), request)


def test_wire_requests_carry_the_guided_fields():
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], guided_choice=["a", "b"],
                                 response_format={"type": "text"})
    assert chat.to_request_config().guided_choice == ["a", "b"]
    completion = CompletionRequest(prompt="x", guided_regex="[0-9]+", guided_grammar=None)
    assert output_constraint(completion.to_request_config()).source == "[0-9]+"
    assert output_constraint(ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}],
                                                   guided_json=SCHEMA).to_request_config()).schema == SCHEMA
