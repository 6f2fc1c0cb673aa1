"""What a request asks its output to match, as one `OutputConstraint` that every backend maps to its own guided
decoding: OpenAI's `response_format` (json_object, json_schema with `strict`), vLLM's extensions `guided_json`,
`guided_regex`, `guided_choice`, `guided_grammar`, and a tool call forced by `tool_choice` ("required" or a named
function), which is constrained to `{"name": ..., "arguments": {...}}` with the tool's parameter schema.

Pure data and checks (no grammar library): malformed constraints are 400s here, on every backend alike; whether a
schema compiles is the backend's library's call (the pt engine asks xgrammar before queueing the request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from swiftops.protocol.errors import BadRequestError
from swiftops.protocol.request import InferRequest, RequestConfig

ConstraintKind = Literal["json_schema", "json_object", "regex", "choice", "grammar"]

# A bigger source is refused before any compiling: xgrammar's compile time grows fast with a schema's size and
# nesting and has no limit of its own (LMDeploy bounds it at 16 KiB for the same reason).
MAX_CONSTRAINT_BYTES = 64 * 1024
_ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class OutputConstraint:
    kind: ConstraintKind
    # json_schema: the schema as compact JSON text (equal schemas share one compiled grammar);
    # regex / grammar: the pattern or EBNF text as given; choice: the choices as a JSON list; json_object: "".
    source: str
    # json_schema: OpenAI's `strict: true`: no properties beyond those the schema declares, even where it does not
    # say `additionalProperties: false`. Otherwise JSON Schema's own rules apply (undeclared properties allowed).
    strict: bool = False
    param: str = "response_format"  # the request field it came from (named in 400s)
    tool_call: bool = False  # the output is a forced tool call: {"name": ..., "arguments": {...}}

    @property
    def schema(self) -> dict[str, Any]:
        return json.loads(self.source) if self.kind == "json_schema" else dict(_ANY_OBJECT)

    @property
    def choices(self) -> list[str]:
        return json.loads(self.source) if self.kind == "choice" else []

    @property
    def choice_regex(self) -> str:
        """The choices as one regex of escaped alternatives (for libraries that take a regex, not a choice)."""
        return "(" + "|".join(map(_regex_literal, self.choices)) + ")"

    @property
    def key(self) -> tuple[str, str, bool]:
        """What a compiled grammar depends on (its cache key)."""
        return self.kind, self.source, self.strict


def _regex_literal(text: str) -> str:
    """`text` matched literally: every regex metacharacter escaped (xgrammar reads ECMAScript-style regexes, where
    Python's re.escape would also escape characters such as spaces that need none)."""
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


_REGEX_SPECIAL = set("\\^$.|?*+()[]{}")


def _bounded(source: str, param: str) -> str:
    if len(source.encode("utf-8")) > MAX_CONSTRAINT_BYTES:
        raise BadRequestError(
            f"{param} is larger than {MAX_CONSTRAINT_BYTES // 1024} KiB; send a smaller schema, pattern or grammar",
            param=param,
        )
    return source


def _schema_constraint(schema: Any, param: str, strict: bool, tool_call: bool = False) -> OutputConstraint:
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise BadRequestError(f"{param} is not valid JSON: {exc}", param=param) from None
    if not isinstance(schema, dict):
        raise BadRequestError(f"{param} must be a JSON Schema object", param=param)
    try:
        source = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))  # key order kept: it is the output's
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadRequestError(f"{param} cannot be serialised as JSON: {exc}", param=param) from None
    return OutputConstraint("json_schema", _bounded(source, param), strict, param, tool_call)


def _from_response_format(response_format: dict[str, Any]) -> OutputConstraint | None:
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint("json_object", "", param="response_format")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequestError(
                "response_format json_schema needs json_schema.schema (a JSON Schema object), "
                "as in {type: json_schema, json_schema: {name: ..., schema: {...}, strict: true}}",
                param="response_format",
            )
        return _schema_constraint(spec["schema"], "response_format", bool(spec.get("strict")))
    raise BadRequestError(
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema", param="response_format"
    )


def _text_constraint(kind: ConstraintKind, value: Any, param: str) -> OutputConstraint:
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{param} must be a non-empty string", param=param)
    return OutputConstraint(kind, _bounded(value, param), param=param)


def _choice_constraint(value: Any) -> OutputConstraint:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
        raise BadRequestError("guided_choice must be a non-empty list of non-empty strings", param="guided_choice")
    return OutputConstraint(
        "choice", _bounded(json.dumps(value, ensure_ascii=False), "guided_choice"), param="guided_choice"
    )


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequestError(
            "each tool needs {type: function, function: {name: ..., parameters: {...}}}", param="tools"
        )
    return function


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters") or _ANY_OBJECT
    if not isinstance(parameters, dict):
        raise BadRequestError(f"tool {function['name']!r}: parameters must be a JSON Schema object", param="tools")
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_constraint(tools: list[dict[str, Any]] | None, tool_choice: Any) -> OutputConstraint | None:
    """A forced tool call (tool_choice "required" or {type: function, function: {name}}) as a JSON schema: one call
    object `{"name": ..., "arguments": {...}}` (any of the tools for "required"), which the tool-call parser reads.
    "auto", "none" or no tools: None (the model decides, unconstrained)."""
    if not tools or tool_choice in (None, "auto", "none"):
        return None
    functions = [_function(t) for t in tools]
    if tool_choice == "required":
        chosen = functions
    elif isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [f for f in functions if f["name"] == name]
        if not chosen:
            raise BadRequestError(
                f"tool_choice names function {name!r}, which is not among the tools "
                f"({', '.join(f['name'] for f in functions)})",
                param="tool_choice",
            )
    else:
        raise BadRequestError(
            f"tool_choice {tool_choice!r} is not one of none, auto, required or "
            "{type: function, function: {name: ...}}",
            param="tool_choice",
        )
    schemas = [_call_schema(f) for f in chosen]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    # `strict` is per function in OpenAI's tools: honoured when every candidate asks for it.
    return _schema_constraint(schema, "tools", all(bool(f.get("strict")) for f in chosen), tool_call=True)


def output_constraint(config: RequestConfig, request: InferRequest | None = None) -> OutputConstraint | None:
    """The request's one output constraint, or None for free text. Two at once (say response_format and
    guided_regex, or either with a forced tool call) is a 400: they cannot both hold."""
    found: list[OutputConstraint] = []
    if config.response_format:
        constraint = _from_response_format(config.response_format)
        if constraint is not None:
            found.append(constraint)
    if config.guided_json is not None:
        found.append(_schema_constraint(config.guided_json, "guided_json", strict=False))
    if config.guided_regex is not None:
        found.append(_text_constraint("regex", config.guided_regex, "guided_regex"))
    if config.guided_choice is not None:
        found.append(_choice_constraint(config.guided_choice))
    if config.guided_grammar is not None:
        found.append(_text_constraint("grammar", config.guided_grammar, "guided_grammar"))
    if request is not None:
        forced = tool_call_constraint(request.tools, request.tool_choice)
        if forced is not None:
            found.append(forced)
    if len(found) > 1:
        names = ", ".join("tool_choice" if c.tool_call else c.param for c in found)
        raise BadRequestError(
            f"this request constrains its output {len(found)} ways ({names}); give one", param=found[1].param
        )
    return found[0] if found else None
