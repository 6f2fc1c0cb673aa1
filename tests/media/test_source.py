"""Every form a media item may take reads to the same bytes; local paths obey the policy."""
import base64
import io

import pytest
from PIL import Image

from swiftops.media import MediaPolicy, load_image, read_media
from swiftops.protocol import BadRequestError
from swiftops.protocol.settings import MediaSettings


def png_bytes(size=(40, 30), color=(200, 30, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def png(tmp_path):
    data = png_bytes()
    path = tmp_path / "red.png"
    path.write_bytes(data)
    return data, path


def test_every_form_reads_the_same_image(png, media_server):
    data, path = png
    media_server.routes["/red.png"] = (200, {"Content-Type": "image/png"}, data)
    encoded = base64.b64encode(data).decode()
    forms = [str(path), f"file://{path}", encoded, f"data:image/png;base64,{encoded}", data,
             {"bytes": data}, {"url": f"data:image/png;base64,{encoded}"}, media_server.url("/red.png"),
             Image.open(io.BytesIO(data))]
    pixels = {load_image(form, MediaPolicy()).tobytes() for form in forms}
    assert len(pixels) == 1
    assert load_image(forms[0]).getpixel((0, 0)) == (200, 30, 10)


def test_read_media_answers_a_path_for_files_and_bytes_otherwise(png):
    data, path = png
    assert read_media(str(path), MediaPolicy()).path == str(path)
    assert read_media(base64.b64encode(data).decode(), MediaPolicy()).data == data
    assert read_media(f"data:image/png;base64,{base64.b64encode(data).decode()}", MediaPolicy()).mime == "image/png"


def test_server_policy_refuses_local_paths(png):
    _, path = png
    with pytest.raises(BadRequestError, match="--allow_local_media") as info:
        read_media(str(path), MediaPolicy.for_server())
    assert info.value.code == "local_media_forbidden"
    with pytest.raises(BadRequestError, match="--allow_local_media"):
        read_media(f"file://{path}", MediaPolicy.for_server())
    allowed = MediaPolicy.for_server(MediaSettings(allow_local_media=True))
    assert read_media(str(path), allowed).path == str(path)


def test_server_policy_still_takes_base64(png):
    data, _ = png
    assert read_media(base64.b64encode(data).decode(), MediaPolicy.for_server()).data == data


def test_missing_file_says_what_to_give(tmp_path):
    with pytest.raises(BadRequestError, match="does not exist"):
        read_media(str(tmp_path / "nope.png"), MediaPolicy())


def test_size_cap_applies_to_base64_files_and_bytes(png):
    data, path = png
    small = MediaPolicy(max_bytes=len(data) - 1)
    for item in (data, base64.b64encode(data).decode(), str(path)):
        with pytest.raises(BadRequestError, match="limit") as info:
            read_media(item, small)
        assert info.value.code == "media_too_large"


def test_bad_base64_and_bad_types_are_400s():
    with pytest.raises(BadRequestError, match="base64"):
        read_media("data:image/png;base64,!!!notbase64", MediaPolicy())
    with pytest.raises(BadRequestError, match="got int"):
        read_media(42, MediaPolicy())
    with pytest.raises(BadRequestError, match="cannot decode the image"):
        load_image(b"definitely not an image", MediaPolicy())
