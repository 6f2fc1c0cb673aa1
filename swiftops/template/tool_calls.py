"""Parsing tool calls out of generated text into OpenAI `tool_calls`.

Formats handled (those the chat templates shipped with transformers models emit):
- hermes / Qwen2.5: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (one or more)
- Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`
- Llama 3.1+: a bare JSON object `{"name": ..., "parameters": {...}}` as the whole answer
"""

from __future__ import annotations

import json
import re
from typing import Any

from swiftops.protocol import FunctionCall, ToolCall

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_MISTRAL = "[TOOL_CALLS]"


def _to_call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return ToolCall(function=FunctionCall(name=obj["name"], arguments=args))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """Split generated text into (content before the calls, tool calls). No calls: (text, [])."""
    if "<tool_call>" in text:
        calls = [c for c in (_to_call(_loads(m)) for m in _HERMES.findall(text)) if c is not None]
        if calls:
            content = text[: text.index("<tool_call>")].strip()
            return (content or None), calls
    if _MISTRAL in text:
        head, _, tail = text.partition(_MISTRAL)
        payload = _loads(tail.strip())
        items = payload if isinstance(payload, list) else [payload]
        calls = [c for c in (_to_call(i) for i in items) if c is not None]
        if calls:
            return (head.strip() or None), calls
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        obj = _loads(stripped)
        if isinstance(obj, dict) and "name" in obj and ("parameters" in obj or "arguments" in obj):
            call = _to_call(obj)
            if call is not None:
                return None, [call]
    return text, []
