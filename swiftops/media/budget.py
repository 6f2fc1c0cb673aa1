"""A request's memory budget for media, charged from image headers and video metadata *before* decoding.

Limits per item (pixels) do not bound a request: four 8192x8192 16-bit RGBA PNGs of 510 KB each took a
server from 1 to 5 GB, and a 265 KB MP4 of 200 large frames to 7 GB, before any later check refused them.
Here each image is charged width x height x bytes per pixel (plus its RGB copy) and each video its sampled
frames x frame size, against `--max_media_bytes_decoded`. Where the model's visual token size is known
(Qwen-style processors: one token per (patch x merge)^2 pixels after resizing), the media's token count is
estimated too, and a prompt whose media alone exceed the context is refused before anything is decoded.

The server sets one budget per request (`request_media_budget`, in swiftops.server.served_request); the
worker thread decoding the request's media sees it through that context variable. Without a budget (the CLI,
the Python API) nothing is charged.
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass

from swiftops.protocol.errors import BadRequestError

MIB = 1 << 20


@dataclass
class MediaBudget:
    max_decoded_bytes: int
    max_tokens: int | None = None  # the model's context length
    pixels_per_token: int | None = None  # after resizing; None: unknown, no token estimate
    image_max_pixels: int | None = None  # what the processor resizes an image down to
    video_max_pixels: int | None = None  # ... and a video frame
    frames_per_token: int = 2  # Qwen2-VL's temporal patch: two frames share their tokens
    used_bytes: int = 0
    estimated_tokens: int = 0

    def _charge(self, size: int, tokens: int, what: str, param: str) -> None:
        self.used_bytes += size
        if self.used_bytes > self.max_decoded_bytes:
            raise BadRequestError(
                f"the request's media would take {math.ceil(self.used_bytes / MIB)} MiB decoded ({what}), over this "
                f"server's {self.max_decoded_bytes // MIB} MiB per request (--max_media_bytes_decoded); send smaller "
                f"or fewer images, or shorter or lower-resolution videos",
                param=param,
                code="media_too_large",
            )
        self.estimated_tokens += tokens
        if self.max_tokens is not None and self.estimated_tokens >= self.max_tokens:
            raise BadRequestError(
                f"the request's media alone need about {self.estimated_tokens} tokens ({what}), over the model's "
                f"context of {self.max_tokens}; send smaller or fewer images or shorter videos",
                param=param,
                code="context_length_exceeded",
            )

    def charge_image(self, width: int, height: int, bytes_per_pixel: float) -> None:
        size = int(width * height * bytes_per_pixel)
        tokens = 0
        if self.pixels_per_token:
            tokens = min(width * height, self.image_max_pixels or width * height) // self.pixels_per_token
        self._charge(size, tokens, f"a {width}x{height} image", "images")

    def charge_video(self, frames: int, width: int, height: int, kept_pixels: int) -> None:
        """`frames` sampled frames of `width` x `height`, each kept as `kept_pixels` RGB pixels."""
        tokens = 0
        if self.pixels_per_token:
            per_frame = min(width * height, self.video_max_pixels or width * height) // self.pixels_per_token
            tokens = math.ceil(frames / self.frames_per_token) * per_frame
        self._charge(frames * kept_pixels * 3, tokens, f"{frames} frames of {width}x{height} video", "videos")


# The budget of the request being served (set by the server per request; None: no limits).
request_media_budget: contextvars.ContextVar[MediaBudget | None] = contextvars.ContextVar(
    "swiftops_media_budget", default=None
)


def current_budget() -> MediaBudget | None:
    return request_media_budget.get()
