"""Images from any media item (see `swiftops.media.source`), as RGB PIL images."""

from __future__ import annotations

import io
import math
from typing import Any, cast

from swiftops.media.budget import current_budget
from swiftops.media.policy import MediaPolicy
from swiftops.media.source import read_media
from swiftops.protocol.errors import BadRequestError

# PIL's decompression-bomb guard raises past twice its limit; ours refuses before decoding (an 8192x8192 RGB
# image is 200 MB in memory).
MAX_DECODED_PIXELS = 8192 * 8192
# Bytes per pixel of a decoded image by PIL mode (16-bit modes keep 2 bytes per band).
_MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "La": 2,
    "PA": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
    "I": 4,
    "F": 4,
    "I;16": 2,
    "I;16L": 2,
    "I;16B": 2,
    "I;16N": 2,
}


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Memory an image takes decoded and converted to RGB: its own mode's pixels, plus the RGB copy."""
    own = width * height * _MODE_BYTES.get(mode, 8)  # an unknown mode: assume the widest
    return own if mode == "RGB" else own + width * height * 3


def _open(item: Any, policy: MediaPolicy):
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    source = read_media(item, policy, "image")
    try:
        # A MediaSource holds a local path or the bytes.
        image = Image.open(source.path if source.path else io.BytesIO(cast(bytes, source.data)))
        if image.width * image.height > MAX_DECODED_PIXELS:
            raise BadRequestError(
                f"the image is {image.width}x{image.height} pixels, too large to decode", param="images"
            )
        budget = current_budget()
        if budget is not None:  # charged from the header: nothing is decoded yet
            budget.charge_image(
                image.width,
                image.height,
                decoded_bytes(image.width, image.height, image.mode) / (image.width * image.height),
            )
        image.load()
    except BadRequestError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequestError(f"cannot decode the image: {exc}", param="images") from None
    return image


def load_image(item: Any, policy: MediaPolicy | None = None, max_pixels: int | None = None):
    """An RGB PIL image; with `max_pixels`, scaled down (aspect kept) to at most that many pixels.

    Qwen-style processors resize by min/max pixels themselves (see swiftops.template.multimodal); the
    `max_pixels` here is for processors that do not, so that a huge image never reaches them whole.
    """
    from PIL import Image

    image = _open(item, policy or MediaPolicy())
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "P"):  # transparent areas become white, as browsers show them
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        image = image.convert("RGB")
    if max_pixels and image.width * image.height > max_pixels:
        scale = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize(
            (max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.Resampling.BICUBIC
        )
    return image
