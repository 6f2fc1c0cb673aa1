"""--draw_boxes: grounding boxes in an answer are drawn on the request's image and saved."""
from __future__ import annotations

from PIL import Image

from swiftops.dataset.runner import BoxDrawer
from swiftops.protocol import ChatCompletionResponse, ChatCompletionResponseChoice, ChatMessage


def _answer(text: str) -> ChatCompletionResponse:
    return ChatCompletionResponse(model="m", choices=[ChatCompletionResponseChoice(
        index=0, message=ChatMessage(content=text), finish_reason="stop")])


def test_boxes_are_drawn_where_the_answer_puts_them(tmp_path):
    image_path = tmp_path / "street.png"
    Image.new("RGB", (200, 100), (255, 255, 255)).save(image_path)
    drawer = BoxDrawer(str(tmp_path / "boxes"), min_pixels=1, max_pixels=200 * 100)
    text = '```json\n[{"bbox_2d": [20, 10, 120, 60], "label": "car"}]\n```'
    saved = drawer.save("data.jsonl#3", [str(image_path)], _answer(text))
    assert saved is not None and saved.endswith("data.jsonl_3.png")
    drawn = Image.open(saved).convert("RGB")
    assert drawn.size == (200, 100)
    assert drawn.getpixel((20, 35)) != (255, 255, 255)  # the box's left edge is painted
    assert drawn.getpixel((70, 35)) == (255, 255, 255)  # its inside is not
    assert drawer.save("no-boxes", [str(image_path)], _answer("just words")) is None
    assert drawer.save("no-image", [], _answer(text)) is None
