"""The seed's multimodal examples against a real `swiftops deploy` of the tiny VLM: two images compared,
a video described, a base64 video streamed through the `openai` client, InferClient with local paths;
limit_mm_per_prompt and the server's media policy."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from swiftops import InferClient, InferRequest, PtEngine, RequestConfig
from tests.server_process import ServerProcess

GREEDY = RequestConfig(max_tokens=10, temperature=0)


def _png(color, size=(112, 84)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm_dir):
    with ServerProcess(["--model", str(tiny_vlm_dir), "--served_model_name", "tiny-vl",
                        "--allowed_media_domains", "127.0.0.1", "--limit_mm_per_prompt", '{"image": 2, "video": 1}',
                        "--max_batch_size", "8"]) as server:
        yield server


@pytest.fixture(scope="module")
def local_engine(tiny_vlm_dir):
    engine = PtEngine(str(tiny_vlm_dir), max_batch_size=8)
    yield engine
    engine.close()


@pytest.fixture()
def media(media_server, sample_video_bytes):
    media_server.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, _png((200, 120, 40)))
    media_server.routes["/animal.png"] = (200, {"Content-Type": "image/png"}, _png((20, 160, 60), (84, 112)))
    media_server.routes["/baby.mp4"] = (200, {"Content-Type": "video/mp4"}, sample_video_bytes)
    return media_server


def _client(server):
    from openai import OpenAI
    return OpenAI(api_key="EMPTY", base_url=server.url + "/v1")


def test_two_images_compared_as_the_seed_does(vlm_server, local_engine, media):
    parts = [{"type": "image", "image": media.url("/cat.png")}, {"type": "image", "image": media.url("/animal.png")},
             {"type": "text", "text": "两张图的区别是什么？"}]
    resp = _client(vlm_server).chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": parts}],
                                                       max_tokens=10, temperature=0)
    # The same request through the Python API with ms-swift's tag form gives the same greedy answer.
    local = local_engine.infer([InferRequest(messages=[{"role": "user", "content": "<image><image>两张图的区别是什么？"}],
                                             images=[media.url("/cat.png"), media.url("/animal.png")])], GREEDY)[0]
    assert resp.choices[0].message.content == local.choices[0].message.content
    assert resp.usage.prompt_tokens == local.usage.prompt_tokens > 20  # the images' visual tokens are in the prompt


def test_video_described_and_base64_video_streamed(vlm_server, local_engine, media, sample_video_bytes):
    client = _client(vlm_server)
    by_url = client.chat.completions.create(
        model="tiny-vl", max_tokens=10, temperature=0,
        messages=[{"role": "user", "content": [{"type": "video", "video": media.url("/baby.mp4")},
                                               {"type": "text", "text": "describe the video"}]}])
    data_uri = "data:video/mp4;base64," + base64.b64encode(sample_video_bytes).decode()
    stream = client.chat.completions.create(
        model="tiny-vl", max_tokens=10, temperature=0, stream=True,
        messages=[{"role": "user", "content": [{"type": "video", "video": data_uri},
                                               {"type": "text", "text": "describe the video"}]}])
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == by_url.choices[0].message.content  # the same video, by URL or inline
    local = local_engine.infer([InferRequest(messages=[{"role": "user", "content": "<video>describe the video"}],
                                             videos=[media.url("/baby.mp4")])], GREEDY)[0]
    assert by_url.choices[0].message.content == local.choices[0].message.content


def test_infer_client_sends_local_paths_as_base64(vlm_server, local_engine, tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(_png((200, 120, 40)))
    request = InferRequest(messages=[{"role": "user", "content": "<image>what is this?"}], images=[str(path)])
    client = InferClient(base_url=vlm_server.url)
    try:
        remote = client.infer([request], GREEDY)[0]
    finally:
        client.close()
    assert remote.choices[0].message.content == local_engine.infer([request], GREEDY)[0].choices[0].message.content


def test_limit_per_prompt_and_local_paths_are_refused(vlm_server, media, tmp_path):
    import openai
    client = _client(vlm_server)
    three = [{"type": "image", "image": media.url("/cat.png")}] * 3 + [{"type": "text", "text": "hi"}]
    with pytest.raises(openai.BadRequestError, match="image"):
        client.chat.completions.create(model="tiny-vl", messages=[{"role": "user", "content": three}], max_tokens=4)
    path = tmp_path / "secret.png"
    path.write_bytes(_png((1, 2, 3)))
    with pytest.raises(openai.BadRequestError, match="local"):
        client.chat.completions.create(model="tiny-vl", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "image": str(path)}, {"type": "text", "text": "hi"}]}])
    ok = client.chat.completions.create(model="tiny-vl", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].finish_reason in ("stop", "length")
