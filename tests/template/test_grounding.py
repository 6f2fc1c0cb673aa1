"""Boxes from Qwen2.5-VL's JSON (absolute pixels) and Qwen2-VL's box tokens (0-1000), drawn on the image."""
import pytest
from PIL import Image

from swiftops.template.grounding import Box, draw_boxes, model_input_size, parse_boxes

QWEN25_ANSWER = """Sure, here they are:
```json
[
  {"bbox_2d": [10, 20, 60, 90], "label": "cat"},
  {"bbox_2d": [70, 5, 95, 40], "label": "dog"}
]
```"""


def test_qwen2_5_json_boxes_in_pixels_of_the_model_input():
    # The model saw a 100x100 resize of a 200x300 image: boxes scale back by 2 and 3.
    boxes = parse_boxes(QWEN25_ANSWER, (200, 300), model_input_size=(100, 100))
    assert boxes == [Box(20, 60, 120, 270, "cat"), Box(140, 15, 190, 120, "dog")]


def test_qwen2_5_json_without_fence_or_resize():
    assert parse_boxes('[{"bbox_2d": [1, 2, 3, 4], "label": "x"}] then text', (50, 50)) == [Box(1, 2, 3, 4, "x")]
    assert parse_boxes('{"bbox_2d": [5, 5, 9, 9]}', (50, 50)) == [Box(5, 5, 9, 9, None)]


def test_qwen2_box_tokens_on_the_thousand_grid():
    text = ("<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(500,750)<|box_end|> and "
            "<|object_ref_start|>a dog<|object_ref_end|><|box_start|>(0,0),(1000,1000)<|box_end|>")
    assert parse_boxes(text, (200, 400)) == [Box(20, 80, 100, 300, "the cat"), Box(0, 0, 200, 400, "a dog")]


def test_qwen2_boxes_survive_skip_special_tokens():
    assert parse_boxes("the cat(100,200),(500,750)", (200, 400), style="qwen2_vl") == [Box(20, 80, 100, 300, "the cat")]


def test_boxes_are_clamped_and_ordered():
    assert parse_boxes('[{"bbox_2d": [120, 90, -5, 10]}]', (100, 80)) == [Box(0, 10, 100, 80, None)]


def test_no_boxes():
    assert parse_boxes("I see no cat.", (10, 10)) == []
    assert parse_boxes("(1,2),(3,4)", (10, 10), style="qwen2_5_vl") == []


def test_model_input_size_matches_qwen_resize():
    assert model_input_size((1000, 500), max_pixels=28 * 28 * 1280) == (1008, 504)
    w, h = model_input_size((4000, 3000), max_pixels=28 * 28 * 256)
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 28 * 28 * 256


def test_draw_boxes_outlines_each_box_and_keeps_the_original():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    drawn = draw_boxes(image, [Box(10, 20, 60, 80, "cat"), Box(70, 70, 90, 90, "dog")], line_width=2)
    assert image.getpixel((10, 50)) == (0, 0, 0)  # the input is untouched
    left_edge, inside = drawn.getpixel((10, 50)), drawn.getpixel((35, 50))
    assert left_edge != (0, 0, 0) and inside == (0, 0, 0)
    assert drawn.getpixel((70, 80)) not in ((0, 0, 0), left_edge)  # another label, another colour


@pytest.mark.parametrize("style", ["auto", "qwen2_5_vl"])
def test_styles_agree_on_json(style):
    assert parse_boxes(QWEN25_ANSWER, (100, 100), style=style)[0].label == "cat"
