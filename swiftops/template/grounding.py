"""Boxes in grounding answers, and drawing them on the image.

Two conventions, both from the Qwen VL family:

* Qwen2.5-VL answers JSON, usually in a ```json fence: `[{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}]`,
  in absolute pixels *of the image the model saw* (after the processor's min/max-pixel resize); pass
  that size as `model_input_size` (see `model_input_size`) to map them onto the original image.
* Qwen2-VL answers `<|object_ref_start|>cat<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`
  with coordinates on a 0-1000 grid. Decoding with skip_special_tokens drops the markers, leaving
  `cat(x1,y1),(x2,y2)`: that form is parsed too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

Style = Literal["auto", "qwen2_5_vl", "qwen2_vl"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_QWEN2_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>)?\s*<\|box_start\|>"
    r"(?P<points>.*?)<\|box_end\|>",
    re.DOTALL,
)
_POINT_PAIR = re.compile(
    r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)\s*,?\s*"
    r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)"
)
# The stripped Qwen2-VL form: an optional label right before the two points.
_BARE_BOX = re.compile(
    r"(?P<label>[^\n()<>]*?)\s*\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)\s*,\s*"
    r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)"
)
QWEN2_GRID = 1000


@dataclass(frozen=True)
class Box:
    """A box in pixels of the original image: (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def model_input_size(
    image_size: tuple[int, int], min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280, factor: int = 28
) -> tuple[int, int]:
    """(width, height) Qwen2-VL's processor resizes an image of `image_size` (width, height) to."""
    from swiftops.template.qwen_video import smart_resize

    width, height = image_size
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return (w, h)


def _json_candidates(text: str) -> list[Any]:
    blocks = _FENCE.findall(text) or [text]
    found = []
    for block in blocks:
        block = block.strip()
        start = min((i for i in (block.find("["), block.find("{")) if i >= 0), default=-1)
        if start < 0:
            continue
        try:
            found.append(json.loads(block[start:]))
        except json.JSONDecodeError:
            # Trailing prose after the JSON: take the longest prefix that parses.
            try:
                found.append(json.JSONDecoder().raw_decode(block[start:])[0])
            except json.JSONDecodeError:
                continue
    return found


def _json_boxes(text: str) -> list[tuple[list[float], str | None]]:
    boxes = []
    for value in _json_candidates(text):
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                continue
            coords = item.get("bbox_2d", item.get("bbox"))
            if isinstance(coords, list) and len(coords) == 4 and all(isinstance(c, (int, float)) for c in coords):
                label = item.get("label", item.get("name"))
                boxes.append(([float(c) for c in coords], str(label) if label is not None else None))
    return boxes


def _qwen2_boxes(text: str) -> list[tuple[list[float], str | None]]:
    boxes = []
    if "<|box_start|>" in text:
        for match in _QWEN2_BOX.finditer(text):
            label = (match.group("label") or "").strip() or None
            for pair in _POINT_PAIR.finditer(match.group("points")):
                boxes.append(([float(v) for v in pair.groups()], label))
        return boxes
    for match in _BARE_BOX.finditer(text):
        label = match.group("label").strip(" :,.-") or None
        boxes.append(([float(v) for v in match.groups()[1:]], label))
    return boxes


def parse_boxes(
    text: str, image_size: tuple[int, int], *, style: Style = "auto", model_input_size: tuple[int, int] | None = None
) -> list[Box]:
    """Boxes in `text`, in pixels of an image of `image_size` (width, height), clamped to the image.

    style: "qwen2_5_vl" (JSON, absolute pixels of `model_input_size`, default: `image_size`), "qwen2_vl"
    (0-1000 grid), or "auto" (JSON if there is any, else Qwen2-VL's form).
    """
    width, height = image_size
    json_boxes = _json_boxes(text) if style in ("auto", "qwen2_5_vl") else []
    if json_boxes:
        in_w, in_h = model_input_size or image_size
        sx, sy, raw = width / in_w, height / in_h, json_boxes
    else:
        if style == "qwen2_5_vl":
            return []
        sx, sy, raw = width / QWEN2_GRID, height / QWEN2_GRID, _qwen2_boxes(text)
    boxes = []
    for (x1, y1, x2, y2), label in raw:
        x1, x2 = sorted((min(max(x1 * sx, 0.0), float(width)), min(max(x2 * sx, 0.0), float(width))))
        y1, y2 = sorted((min(max(y1 * sy, 0.0), float(height)), min(max(y2 * sy, 0.0), float(height))))
        boxes.append(Box(x1, y1, x2, y2, label))
    return boxes


_COLORS = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)


def draw_boxes(image: Any, boxes: list[Box], line_width: int | None = None):
    """A copy of `image` (a PIL image) with each box outlined and labelled, one colour per label."""
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = line_width or max(2, round(math.sqrt(out.width * out.height) / 200))
    colors: dict[str | None, tuple[int, int, int]] = {}
    for box in boxes:
        color = colors.setdefault(box.label, _COLORS[len(colors) % len(_COLORS)])
        draw.rectangle(box.as_tuple(), outline=color, width=width)
        if box.label:
            left, top = box.x1, max(0.0, box.y1 - 12)
            text_box = draw.textbbox((left, top), box.label)
            draw.rectangle(text_box, fill=color)
            draw.text((left, top), box.label, fill=(255, 255, 255))
    return out


def draw_bbox(image: Any, ref: list[str], bbox: list[list[Any]], norm_bbox: str = "norm1000") -> None:
    """ms-swift's `draw_bbox`: outline and label each box on `image` (a PIL image, changed in place). `bbox` holds
    [x1, y1, x2, y2] per label in `ref`; `norm_bbox='norm1000'`: on a 0-1000 grid, 'none': in pixels."""
    if norm_bbox not in ("norm1000", "none"):
        raise ValueError(f"norm_bbox {norm_bbox!r}: use 'norm1000' or 'none'")
    scale_x = image.width / QWEN2_GRID if norm_bbox == "norm1000" else 1.0
    scale_y = image.height / QWEN2_GRID if norm_bbox == "norm1000" else 1.0
    boxes = [
        Box(float(x1) * scale_x, float(y1) * scale_y, float(x2) * scale_x, float(y2) * scale_y, label or None)
        for label, (x1, y1, x2, y2) in zip(ref, bbox, strict=False)
    ]
    image.paste(draw_boxes(image, boxes).convert(image.mode))


def save_drawn_boxes(
    text: str, image_source: Any, out_path: str, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> str | None:
    """`swiftops infer --draw_boxes DIR`: draw the boxes an answer names on the request's image and save it.

    Qwen2.5-VL answers in pixels of the image as the processor resized it, so the model's input size is
    computed with the same min/max pixels the processor used. Returns the path written, or None when the
    answer has no boxes.
    """
    from swiftops.media.image import load_image

    image = load_image(image_source)
    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    boxes = parse_boxes(text, image.size, model_input_size=model_input_size(image.size, **kwargs))
    if not boxes:
        return None
    draw_boxes(image, boxes).save(out_path)
    return out_path
