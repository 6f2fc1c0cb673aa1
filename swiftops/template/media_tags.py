"""Media tags and content parts: the internal form of a multimodal conversation.

Two ways to attach media, as in ms-swift, both reduced to text with `<image>`, `<video>`, `<audio>` tags
plus one media list per kind, in tag order:

* tags in the text and top-level lists: `messages=[{"role": "user", "content": "<image><image>What differs?"}],
  images=[a, b]` (media given without any tag of their kind go in front of the first user message);
* OpenAI content parts: `image_url` (a URL string or `{url}`), `image`, `video`, `video_url`, `audio`,
  `audio_url`, `input_audio` (`{data, format}`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from swiftops.protocol import BadRequestError, InferRequest

KINDS = ("image", "video", "audio")
TAG = {kind: f"<{kind}>" for kind in KINDS}
_TAG_SPLIT = re.compile(r"(<image>|<video>|<audio>)")


@dataclass
class MediaConversation:
    """The internal form: messages whose text holds media tags, and the media of each kind in tag order."""

    messages: list[dict[str, Any]]
    media: dict[str, list[Any]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    @property
    def counts(self) -> dict[str, int]:
        return {kind: len(items) for kind, items in self.media.items()}


# ---- content parts -> tags ------------------------------------------------------------------------
def _part_media(part: dict[str, Any]) -> tuple[str, Any]:
    """(kind, item) of a media content part; raises for a malformed one."""
    kind = part.get("type")
    if kind == "image_url" or kind == "video_url" or kind == "audio_url":
        value = part.get(kind)
        item = value.get("url") if isinstance(value, dict) else value
        kind = kind[:-4]
    elif kind == "input_audio":
        value = part.get("input_audio") or {}
        data = value.get("data") if isinstance(value, dict) else None
        # OpenAI sends bare base64 plus a format; a data: URI keeps the format for the decoder.
        fmt = value.get("format", "wav") if isinstance(value, dict) else "wav"
        item = f"data:audio/{fmt};base64,{data}" if data and not str(data).startswith("data:") else data
        kind = "audio"
    elif kind in KINDS:
        item = part.get(kind)
        if item is None and kind == "image":
            item = part.get("image_url") or part.get("url")
    else:
        raise BadRequestError(
            f"unknown content part type {kind!r}; use text, image_url, image, video, video_url, "
            f"audio, audio_url or input_audio",
            param="messages",
        )
    if isinstance(item, dict):
        item = item.get("url", item)
    if item is None or item == "":
        raise BadRequestError(f"a {part.get('type')!r} content part has no media in it", param="messages")
    return kind, item


def extract_media(request: InferRequest) -> MediaConversation:
    """Content parts become tags; each tag gets its media in order; counts of tags and media must match."""
    pending = {"image": list(request.images), "video": list(request.videos), "audio": list(request.audios)}
    tag_count = {kind: 0 for kind in KINDS}
    conversation = MediaConversation(messages=[])
    ordered: dict[str, list[tuple[int, Any]]] = {kind: [] for kind in KINDS}  # (order, item); None: from the list

    def take_tags(text: str) -> None:
        for kind in KINDS:
            n = text.count(TAG[kind])
            for _ in range(n):
                ordered[kind].append((tag_count[kind], None))
                tag_count[kind] += 1

    for i, message in enumerate(request.messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            pieces = []
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequestError(
                        f"messages[{i}].content holds a {type(part).__name__}; content parts are objects with a 'type'",
                        param=f"messages[{i}].content",
                    )
                if part.get("type") == "text":
                    text = str(part.get("text", ""))
                    take_tags(text)
                    pieces.append(text)
                else:
                    kind, item = _part_media(part)
                    ordered[kind].append((tag_count[kind], item))
                    tag_count[kind] += 1
                    pieces.append(TAG[kind])
            message = {**message, "content": "".join(pieces)}
        elif isinstance(content, str):
            take_tags(content)
        conversation.messages.append(message)

    for kind in KINDS:
        from_list = [slot for slot in ordered[kind] if slot[1] is None]
        given = pending[kind]
        if not from_list and given and not ordered[kind]:
            _prepend_tags(conversation.messages, TAG[kind] * len(given))
            conversation.media[kind] = given
            continue
        if len(from_list) != len(given):
            raise BadRequestError(
                f"the messages have {len(from_list)} {TAG[kind]} tag(s) but {len(given)} {kind}(s) were given in "
                f"`{kind}s`; give one {kind} per {TAG[kind]} tag",
                param=f"{kind}s",
                code="media_count_mismatch",
            )
        supply = iter(given)
        conversation.media[kind] = [next(supply) if item is None else item for _, item in ordered[kind]]
    return conversation


def _prepend_tags(messages: list[dict[str, Any]], tags: str) -> None:
    """ms-swift's default: media without tags go in front of the first user message."""
    for message in messages:
        if message.get("role") == "user":
            message["content"] = tags + (message.get("content") or "")
            return
    raise BadRequestError("media were given but there is no user message to attach them to", param="messages")


def check_media_limits(counts: Mapping[str, int], limit_mm_per_prompt: Mapping[str, int] | None) -> None:
    """`--limit_mm_per_prompt '{"image": 5, "video": 2}'`: a request over a limit is a 400."""
    for kind, limit in (limit_mm_per_prompt or {}).items():
        if counts.get(kind, 0) > limit:
            raise BadRequestError(
                f"the request has {counts[kind]} {kind}s but this server takes at most {limit} per "
                f"prompt (--limit_mm_per_prompt); send fewer",
                param=f"{kind}s",
                code="too_many_media",
            )


# ---- tags -> the processor's content parts ----------------------------------------------------------
def to_processor_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with tags become content-part lists (`{"type": "image"}`, `{"type": "text", ...}`), the form
    processors' chat templates expect; messages without tags stay strings (every template takes those)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and _TAG_SPLIT.search(content):
            parts = []
            for piece in _TAG_SPLIT.split(content):
                if piece in ("<image>", "<video>", "<audio>"):
                    parts.append({"type": piece[1:-1]})
                elif piece:
                    parts.append({"type": "text", "text": piece})
            message = {**message, "content": parts}
        out.append(message)
    return out
