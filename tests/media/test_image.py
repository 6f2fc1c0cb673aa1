"""Images come out RGB; `max_pixels` bounds them for processors that do not resize themselves."""
from PIL import Image

from swiftops.media import load_image


def test_modes_become_rgb_and_transparency_white():
    transparent = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(Image.new("L", (4, 4), 128)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(Image.new("P", (4, 4))).mode == "RGB"


def test_max_pixels_scales_down_keeping_the_aspect():
    image = load_image(Image.new("RGB", (400, 200)), max_pixels=20000)
    assert image.width * image.height <= 20000
    assert image.size == (200, 100)
    assert load_image(Image.new("RGB", (40, 20)), max_pixels=20000).size == (40, 20)
