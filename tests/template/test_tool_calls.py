"""Tool calls in generated text become OpenAI tool_calls."""
import json

from swiftops.template.tool_calls import parse_tool_calls


def test_hermes_calls_with_leading_content():
    text = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "杭州"}}\n</tool_call>' \
           '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "杭州"}
    assert calls[0].id != calls[1].id and calls[0].type == "function"


def test_mistral_and_llama_formats():
    _, calls = parse_tool_calls('[TOOL_CALLS][{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]')
    assert [c.function.name for c in calls] == ["a", "b"]
    content, calls = parse_tool_calls('{"name": "search", "parameters": {"q": "swift"}}')
    assert content is None and json.loads(calls[0].function.arguments) == {"q": "swift"}


def test_plain_text_and_broken_json_are_content():
    assert parse_tool_calls("just words") == ("just words", [])
    text = "<tool_call>{not json}</tool_call>"
    assert parse_tool_calls(text) == (text, [])
    assert parse_tool_calls('{"a": 1}') == ('{"a": 1}', [])
