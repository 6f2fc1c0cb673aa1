"""Requests -> what vLLM (and LMDeploy) take as a prompt: token ids, or text plus loaded media.

Media come from ms-swift's two spellings: `<image>`/`<video>`/`<audio>` tags in the text with the items in
`request.images` / `videos` / `audios`, or OpenAI content parts (`image_url`, `image`, `video`, ...).
Either way the messages handed to the chat template get `{"type": "image"}`-style parts, which
multimodal templates turn into the model's placeholder tokens; the items themselves are loaded here
and passed beside the prompt (vLLM's `multi_modal_data`), in order.
"""

from __future__ import annotations

import re
from typing import Any

from swiftops.media.image import load_image
from swiftops.media.policy import MediaPolicy
from swiftops.protocol import BadRequestError, InferRequest

MEDIA_KINDS = ("image", "video", "audio")
_TAG = re.compile(r"<(image|video|audio)>")
# OpenAI content-part types -> (media kind, key holding the item)
_PART_TYPES = {
    "image_url": ("image", "image_url"),
    "image": ("image", "image"),
    "video_url": ("video", "video_url"),
    "video": ("video", "video"),
    "input_audio": ("audio", "input_audio"),
    "audio": ("audio", "audio"),
}


def has_media(request: InferRequest) -> bool:
    if request.images or request.videos or request.audios:
        return True
    return any(
        isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") in _PART_TYPES for p in m["content"])
        for m in request.messages
    )


def split_media(request: InferRequest) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Messages with media replaced by `{"type": kind}` parts, and the media items by kind, in order."""
    queues = {"image": list(request.images), "video": list(request.videos), "audio": list(request.audios)}
    media: dict[str, list[Any]] = {kind: [] for kind in MEDIA_KINDS}
    messages = []
    for message in request.messages:
        content = message.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            pieces = _TAG.split(content)
            for k, piece in enumerate(pieces):
                if k % 2 == 0:
                    if piece:
                        parts.append({"type": "text", "text": piece})
                    continue
                if not queues[piece]:
                    raise BadRequestError(
                        f"the messages have more <{piece}> tags than {piece}s given", param=f"{piece}s"
                    )
                media[piece].append(queues[piece].pop(0))
                parts.append({"type": piece})
        elif isinstance(content, list):
            for part in content:
                kind_key = _PART_TYPES.get(part.get("type", "")) if isinstance(part, dict) else None
                if kind_key is None:
                    parts.append(part)
                    continue
                kind, key = kind_key
                item = part.get(key)
                if isinstance(item, dict):  # {"url": ...} (OpenAI) or {"data": ..., "format": ...} (audio)
                    item = item.get("url") or item.get("data")
                media[kind].append(item)
                parts.append({"type": kind})
        else:
            messages.append(message)
            continue
        has_media_part = any(p.get("type") in MEDIA_KINDS for p in parts)
        messages.append({**message, "content": parts if has_media_part else "".join(p.get("text", "") for p in parts)})
    for kind, left in queues.items():
        if left:
            raise BadRequestError(
                f"{len(left)} {kind}(s) have no <{kind}> tag in the messages; add one tag per {kind} where it belongs",
                param=f"{kind}s",
            )
    return messages, {kind: items for kind, items in media.items() if items}


def load_media(media: dict[str, list[Any]], policy: MediaPolicy) -> dict[str, Any]:
    """Images are decoded here by swiftops' media loader, under `policy` (a server's: no local files and no private
    addresses unless allowed; size and time caps); videos and audios are passed as given (paths/URLs) for the
    library to decode."""
    loaded: dict[str, Any] = {}
    for kind, items in media.items():
        loaded[kind] = [load_image(i, policy) for i in items] if kind == "image" else list(items)
    return loaded
