"""Prompt building with the tokenizer's (or processor's) own `apply_chat_template`.

We never re-implement a model's template: the ids we feed are exactly what
`tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=True)` builds.
"""
from __future__ import annotations

from typing import Any, Optional

from swiftops.protocol import BadRequestError, InferRequest

_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


def _text_of(content: Any) -> Any:
    """OpenAI content-part lists of text only become one string (text-only templates expect strings)."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text", "") for p in content)
    return content


def normalize_messages(messages: list[dict[str, Any]], default_system: Optional[str] = None) -> list[dict[str, Any]]:
    """Validate roles and content, merge text parts, and add the default system prompt if none is given."""
    if not messages:
        raise BadRequestError("messages must not be empty", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequestError(f"messages[{i}] needs a 'role'", param=f"messages[{i}]")
        role = message["role"]
        if role not in _ROLES:
            raise BadRequestError(f"messages[{i}].role {role!r} is not one of {sorted(_ROLES)}", param=f"messages[{i}].role")
        item = {k: v for k, v in message.items() if v is not None}
        if role == "developer":  # OpenAI's newer name for the system role
            item["role"] = "system"
        item["content"] = _text_of(message.get("content"))
        if item["content"] is None and not message.get("tool_calls"):
            item["content"] = ""
        out.append(item)
    if default_system and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": default_system})
    return out


def _tools_for(request: InferRequest) -> Optional[list[dict[str, Any]]]:
    if not request.tools or request.tool_choice == "none":
        return None
    return request.tools


def render_prompt(tokenizer: Any, request: InferRequest, default_system: Optional[str] = None) -> str:
    """The prompt text for a request: the raw prompt, or the chat template applied to its messages."""
    if request.prompt is not None:
        if isinstance(request.prompt, list):
            return tokenizer.decode(request.prompt)
        return request.prompt
    messages = normalize_messages(request.messages, default_system)
    if messages[-1]["role"] == "assistant":
        raise BadRequestError("the last message is from the assistant; end the conversation with a user "
                              "(or tool) message to get an answer", param="messages")
    if getattr(tokenizer, "chat_template", None) is None:
        raise BadRequestError("this model has no chat template; send a raw prompt (/v1/completions) instead")
    try:
        return tokenizer.apply_chat_template(messages, tools=_tools_for(request), add_generation_prompt=True,
                                             tokenize=False)
    except Exception as exc:  # jinja errors from the model's own template (e.g. roles it refuses)
        raise BadRequestError(f"the model's chat template rejected the conversation: {exc}", param="messages") from exc


def encode_prompt(tokenizer: Any, request: InferRequest, default_system: Optional[str] = None) -> list[int]:
    """Token ids to feed the model for a request."""
    if request.prompt is not None and isinstance(request.prompt, list):
        return [int(t) for t in request.prompt]
    text = render_prompt(tokenizer, request, default_system)
    # The template already holds any BOS it wants; raw prompts get the tokenizer's usual special tokens.
    return tokenizer(text, add_special_tokens=request.prompt is not None)["input_ids"]
