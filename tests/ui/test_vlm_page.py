"""An image attached in the page reaches a real multimodal model: `swiftops app` on the tiny Qwen2.5-VL."""
from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.server_process import ServerProcess

KEY = "sk-ui-vlm"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui-screenshot.png"


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm_dir):
    process = ServerProcess(["--model", str(tiny_vlm_dir), "--served_model_name", "tiny-vl", "--api_key", KEY])
    process.args[process.args.index("deploy")] = "app"
    with process:
        yield process


def _gradient_png() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (96, 64))
    image.putdata([(x * 2, y * 3, 160) for y in range(64) for x in range(96)])
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_image_attachment_answered_by_the_vlm(context, vlm_server, tmp_path):
    png = _gradient_png()
    page = context.new_page()
    page.goto(vlm_server.url)
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "16")
    page.wait_for_function("() => document.querySelector('#model').value === 'tiny-vl'")
    page.set_input_files("#file", files=[{"name": "gradient.png", "mimeType": "image/png", "buffer": png}])
    page.wait_for_selector("#pending .chip img")
    page.fill("#input", "What is in this image?")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request:
        page.press("#input", "Enter")
    page.wait_for_function("() => !window.swiftops.state.controller && window.swiftops.state.messages.length >= 2")

    content = request.value.post_data_json["messages"][0]["content"]
    assert content[0] == {"type": "image_url",
                          "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}
    expected = httpx.post(vlm_server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "tiny-vl", "messages": [{"role": "user", "content": content}],
                                "max_tokens": 16, "temperature": 0, "top_p": 1}, timeout=60)
    assert expected.status_code == 200, expected.text
    answer = expected.json()
    assert page.evaluate("() => window.swiftops.state.messages[1].text") == answer["choices"][0]["message"]["content"]
    assert page.locator(".msg.assistant .error").count() == 0
    # The image's prompt tokens (vision patches) show under the reply, as the API counts them.
    assert f"{answer['usage']['prompt_tokens']} prompt tokens" in page.inner_text(".msg.assistant .meta")
    thumbnail = page.locator(".msg.user .media img")
    assert thumbnail.get_attribute("alt") == "gradient.png"
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth") == 96

    # A follow-up: the image stays in the history the page sends.
    page.fill("#input", "And its colors?")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as follow_up:
        page.press("#input", "Enter")
    page.wait_for_function("() => !window.swiftops.state.controller && window.swiftops.state.messages.length >= 4")
    history = [{"role": "user", "content": content},
               {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
               {"role": "user", "content": "And its colors?"}]
    assert follow_up.value.post_data_json["messages"] == history
    expected = httpx.post(vlm_server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "tiny-vl", "messages": history, "max_tokens": 16, "temperature": 0,
                                "top_p": 1}, timeout=60)
    assert page.evaluate("() => window.swiftops.state.messages[3].text") == \
        expected.json()["choices"][0]["message"]["content"]

    page.screenshot(path=str(tmp_path / "vlm-conversation.png"))
    assert (tmp_path / "vlm-conversation.png").stat().st_size > 10_000  # a rendered page, not a blank
    if os.environ.get("SWIFTOPS_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture on purpose only
        shutil.copyfile(tmp_path / "vlm-conversation.png", DOCS_SCREENSHOT)
