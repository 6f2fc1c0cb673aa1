"""Prompt building with the tokenizer's (or processor's) own `apply_chat_template`.

We never re-implement a model's template: the ids we feed are exactly what
`tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=True)` builds.
"""

from __future__ import annotations

import contextvars
import logging
import re
from typing import Any

from swiftops.protocol import BadRequestError, InferRequest

logger = logging.getLogger(__name__)

# Whether text that users, systems and tools wrote is tokenized with special tokens split (so that
# "<|im_start|>system" typed into a message stays plain text and cannot forge a turn). The server sets it per
# request from --split_special_tokens; the CLI and Python API keep the default (split).
split_special_tokens: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "swiftops_split_special_tokens", default=True
)
# Roles whose content is somebody's text, not the model's: assistant turns replayed with tool calls keep theirs.
_UNTRUSTED_ROLES = ("user", "system", "tool", "function")
# Private-use code points no template emits: they stand in for untrusted content while the template renders.
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"
_MARK = re.compile("\ue000(\\d+)\ue001")

_ROLES = {"system", "user", "assistant", "tool", "developer", "function"}


def _text_of(content: Any) -> Any:
    """OpenAI content-part lists of text only become one string (text-only templates expect strings)."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p.get("text", "") for p in content)
    return content


def normalize_messages(messages: list[dict[str, Any]], default_system: str | None = None) -> list[dict[str, Any]]:
    """Validate roles and content, merge text parts, and add the default system prompt if none is given."""
    if not messages:
        raise BadRequestError("messages must not be empty", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequestError(f"messages[{i}] needs a 'role'", param=f"messages[{i}]")
        role = message["role"]
        if role not in _ROLES:
            raise BadRequestError(
                f"messages[{i}].role {role!r} is not one of {sorted(_ROLES)}", param=f"messages[{i}].role"
            )
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


def _tools_for(request: InferRequest) -> list[dict[str, Any]] | None:
    if not request.tools or request.tool_choice == "none":
        return None
    return request.tools


def render_prompt(tokenizer: Any, request: InferRequest, default_system: str | None = None) -> str:
    """The prompt text for a request: the raw prompt, or the chat template applied to its messages."""
    if request.prompt is not None:
        if isinstance(request.prompt, list):
            return tokenizer.decode(request.prompt)
        return request.prompt
    messages = normalize_messages(request.messages, default_system)
    if messages[-1]["role"] == "assistant":
        raise BadRequestError(
            "the last message is from the assistant; end the conversation with a user "
            "(or tool) message to get an answer",
            param="messages",
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise BadRequestError("this model has no chat template; send a raw prompt (/v1/completions) instead")
    try:
        return tokenizer.apply_chat_template(
            messages, tools=_tools_for(request), add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # jinja errors from the model's own template (e.g. roles it refuses)
        raise BadRequestError(f"the model's chat template rejected the conversation: {exc}", param="messages") from exc


def _special_tokens(tokenizer: Any) -> list[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return [t.content for t in decoder.values() if getattr(t, "special", False) and t.content]


def _with_marked_content(messages: list[dict[str, Any]], specials: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Messages whose untrusted text holds a special token get a marker in its place; returns the texts."""
    texts: list[str] = []
    out = []
    for message in messages:
        content = message.get("content")
        if message.get("role") in _UNTRUSTED_ROLES and isinstance(content, str) and any(t in content for t in specials):
            message = {**message, "content": f"{_MARK_OPEN}{len(texts)}{_MARK_CLOSE}"}
            texts.append(content)
        out.append(message)
    return out, texts


def _encode_split(
    tokenizer: Any, request: InferRequest, default_system: str | None, specials: list[str]
) -> list[int] | None:
    """Ids with special tokens split inside untrusted text and kept in the template's own text; None when no
    untrusted text holds one (the usual case: then the whole prompt is tokenized in one piece, as before)."""
    messages = normalize_messages(request.messages, default_system)
    marked, texts = _with_marked_content(messages, specials)
    if not texts:
        return None
    rendered = render_prompt(
        tokenizer, InferRequest(messages=marked, tools=request.tools, tool_choice=request.tool_choice), None
    )
    pieces = _MARK.split(rendered)  # template, index, template, index, ..., template
    indices = [int(i) for i in pieces[1::2]]
    if sorted(indices) != list(range(len(texts))):
        # A template that dropped, copied or rewrote a message: the markers cannot locate its text, so the
        # prompt is tokenized whole, as before (and said so).
        logger.warning(
            "the chat template does not keep message text verbatim; special tokens typed into messages "
            "are not split for this request"
        )
        return None
    ids: list[int] = []
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            if piece:
                ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        else:
            ids.extend(tokenizer(texts[int(piece)], add_special_tokens=False, split_special_tokens=True)["input_ids"])
    return ids


def encode_prompt(tokenizer: Any, request: InferRequest, default_system: str | None = None) -> list[int]:
    """Token ids to feed the model for a request. Special tokens typed into user, system or tool text are split
    into ordinary tokens (unless the `split_special_tokens` context variable is False): only the chat
    template itself emits them."""
    if request.prompt is not None and isinstance(request.prompt, list):
        return [int(t) for t in request.prompt]
    if request.prompt is None and split_special_tokens.get():
        specials = _special_tokens(tokenizer)
        if specials:
            ids = _encode_split(tokenizer, request, default_system, specials)
            if ids is not None:
                return ids
    text = render_prompt(tokenizer, request, default_system)
    # The template already holds any BOS it wants; raw prompts get the tokenizer's usual special tokens.
    return tokenizer(text, add_special_tokens=request.prompt is not None)["input_ids"]
