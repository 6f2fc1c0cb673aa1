"""A multimodal request to the processor's inputs: tags and content parts, limits, pixel bounds, every media
form, video frames without torchvision, and a forward of the tiny Qwen2.5-VL on the result."""
import base64
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from swiftops.media import MediaLimits, MediaPolicy
from swiftops.protocol import BadRequestError, InferRequest
from swiftops.protocol.openai_api import ChatCompletionRequest
from swiftops.engines.pt.mm_prefill import prompt_embeddings, rope_positions
from swiftops.template.multimodal import (MultimodalEncoder, check_media_limits, extract_media, smart_resize,
                                          to_processor_messages)

FACTOR = 28  # Qwen2-VL: 14-pixel patches merged 2x2 -> one visual token per 28x28 pixels


def png(size=(112, 84), color=(10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def user(content):
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def processor(tiny_vlm_dir):
    from swiftops.template.processor_loader import load_processor

    return load_processor(str(tiny_vlm_dir))


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir).eval()


def encoder(processor, **limits):
    return MultimodalEncoder(processor, limits=MediaLimits(**limits), policy=MediaPolicy())


def visual_tokens(processor, inputs, kind="image"):
    token = processor.image_token_id if kind == "image" else processor.video_token_id
    return inputs.input_ids.count(token)


# ---- the internal form ---------------------------------------------------------------------------
def test_tags_take_media_in_order():
    conversation = extract_media(InferRequest(messages=user("<image><image>What differs?"), images=["a", "b"]))
    assert conversation.media["image"] == ["a", "b"] and conversation.counts == {"image": 2, "video": 0, "audio": 0}


def test_openai_content_parts_become_tags():
    parts = [{"type": "text", "text": "Compare "}, {"type": "image_url", "image_url": {"url": "u1"}},
             {"type": "image_url", "image_url": "u2"}, {"type": "image", "image": "u3"},
             {"type": "video", "video": "v1"}, {"type": "video_url", "video_url": {"url": "v2"}},
             {"type": "audio", "audio": "a1"}, {"type": "input_audio", "input_audio": {"data": "QUJD", "format": "mp3"}}]
    conversation = extract_media(InferRequest(messages=user(parts)))
    assert conversation.messages[0]["content"] == "Compare <image><image><image><video><video><audio><audio>"
    assert conversation.media == {"image": ["u1", "u2", "u3"], "video": ["v1", "v2"],
                                  "audio": ["a1", "data:audio/mp3;base64,QUJD"]}


def test_parts_and_list_media_interleave_in_tag_order():
    messages = [{"role": "user", "content": "<image>first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "part"}},
                                             {"type": "text", "text": "and <image>"}]}]
    conversation = extract_media(InferRequest(messages=messages, images=["list1", "list2"]))
    assert conversation.media["image"] == ["list1", "part", "list2"]


def test_media_without_tags_go_before_the_first_user_message():
    conversation = extract_media(InferRequest(messages=user("Describe"), images=["a"], videos=["v"]))
    assert conversation.messages[0]["content"] == "<video><image>Describe"


def test_tag_and_media_count_mismatch_is_a_clear_400():
    with pytest.raises(BadRequestError, match="2 <image> tag.*1 image") as info:
        extract_media(InferRequest(messages=user("<image><image>What differs?"), images=["a"]))
    assert info.value.code == "media_count_mismatch" and info.value.param == "images"
    with pytest.raises(BadRequestError, match="0 <video> tag|1 <video> tag"):
        extract_media(InferRequest(messages=user("<video>x"), videos=["a", "b"]))
    with pytest.raises(BadRequestError, match="unknown content part"):
        extract_media(InferRequest(messages=user([{"type": "hologram", "hologram": "x"}])))


def test_limit_mm_per_prompt():
    check_media_limits({"image": 5, "video": 2}, {"image": 5, "video": 2})
    with pytest.raises(BadRequestError, match="at most 5") as info:
        check_media_limits({"image": 6}, {"image": 5})
    assert info.value.status == 400 and info.value.code == "too_many_media"


def test_limit_is_enforced_by_the_encoder_before_loading(processor):
    enc = MultimodalEncoder(processor, limit_mm_per_prompt={"image": 1})
    # The media are bogus paths: the limit must fire before anything is read.
    with pytest.raises(BadRequestError, match="at most 1"):
        enc.encode(InferRequest(messages=user("<image><image>"), images=["/nope1.png", "/nope2.png"]))


def test_processor_messages_use_content_parts():
    out = to_processor_messages([{"role": "system", "content": "sys"}, {"role": "user", "content": "a<image>b<video>"}])
    assert out[0]["content"] == "sys"
    assert out[1]["content"] == [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"},
                                 {"type": "video"}]


# ---- through the processor -------------------------------------------------------------------------
def test_two_images_prompt_and_tensors(processor, vlm):
    a, b = Image.new("RGB", (112, 84), (255, 0, 0)), Image.new("RGB", (56, 56), (0, 0, 255))
    inputs = encoder(processor).encode(InferRequest(messages=user("<image><image>What differs?"), images=[a, b]))
    t = inputs.tensors
    assert inputs.prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert "What differs?" in inputs.prompt and inputs.prompt.endswith("<|im_start|>assistant\n")
    assert t["image_grid_thw"].tolist() == [[1, 6, 8], [1, 4, 4]]  # 84x112 -> 6x8 patches; 56x56 -> 4x4
    assert t["pixel_values"].shape == (6 * 8 + 4 * 4, 3 * 2 * 14 * 14)
    assert visual_tokens(processor, inputs) == (48 + 16) // 4
    assert (t["mm_token_type_ids"][0] == 1).sum() == visual_tokens(processor, inputs)
    assert set(inputs.model_kwargs()) == {"mm_token_type_ids", "pixel_values", "image_grid_thw"}
    with torch.inference_mode():
        logits = vlm(**t).logits
    assert logits.shape == (1, len(inputs.input_ids), vlm.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("max_pixels", [FACTOR * FACTOR * 4, FACTOR * FACTOR * 16, FACTOR * FACTOR * 64])
def test_max_pixels_sets_the_number_of_visual_tokens(processor, max_pixels):
    image = Image.new("RGB", (640, 480))
    inputs = encoder(processor, max_pixels=max_pixels, min_pixels=FACTOR * FACTOR).encode(
        InferRequest(messages=user("<image>"), images=[image]))
    h, w = smart_resize(480, 640, FACTOR, FACTOR * FACTOR, max_pixels)
    assert visual_tokens(processor, inputs) == (h // FACTOR) * (w // FACTOR) <= max_pixels // (FACTOR * FACTOR)


def test_min_pixels_scales_small_images_up(processor):
    tiny = Image.new("RGB", (28, 28))
    inputs = encoder(processor, min_pixels=FACTOR * FACTOR * 16).encode(
        InferRequest(messages=user("<image>"), images=[tiny]))
    assert visual_tokens(processor, inputs) == 16


def test_max_pixels_from_the_environment(processor, monkeypatch):
    monkeypatch.setenv("MAX_PIXELS", str(FACTOR * FACTOR * 4))
    monkeypatch.setenv("MIN_PIXELS", str(FACTOR * FACTOR))
    enc = MultimodalEncoder(processor)
    inputs = enc.encode(InferRequest(messages=user("<image>"), images=[Image.new("RGB", (640, 480))]))
    assert visual_tokens(processor, inputs) <= 4


def test_every_image_form_gives_the_same_pixels(processor, tmp_path, media_server):
    data = png()
    (tmp_path / "img.png").write_bytes(data)
    media_server.routes["/img.png"] = (200, {"Content-Type": "image/png"}, data)
    encoded = base64.b64encode(data).decode()
    forms = [str(tmp_path / "img.png"), media_server.url("/img.png"), encoded, f"data:image/png;base64,{encoded}",
             Image.open(io.BytesIO(data))]
    enc = encoder(processor)
    pixels = [enc.encode(InferRequest(messages=user("<image>hi"), images=[form])).tensors["pixel_values"]
              for form in forms]
    assert all(torch.equal(pixels[0], p) for p in pixels[1:])


def test_openai_wire_request_with_a_data_uri(processor):
    encoded = base64.b64encode(png()).decode()
    wire = ChatCompletionRequest(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in the picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}}]}])
    inputs = encoder(processor).encode(wire.to_infer_request())
    assert inputs.counts["image"] == 1 and visual_tokens(processor, inputs) > 0


def test_server_policy_refuses_client_paths_and_loopback_urls(processor, tmp_path, media_server):
    (tmp_path / "img.png").write_bytes(png())
    media_server.routes["/img.png"] = (200, {}, png())
    enc = MultimodalEncoder(processor, policy=MediaPolicy.for_server())
    with pytest.raises(BadRequestError, match="--allow_local_media"):
        enc.encode(InferRequest(messages=user("<image>"), images=[str(tmp_path / "img.png")]))
    with pytest.raises(BadRequestError, match="non-public"):
        enc.encode(InferRequest(messages=user("<image>"), images=[media_server.url("/img.png")]))


# ---- video --------------------------------------------------------------------------------------------
def test_video_tokens_follow_fps_max_frames_and_video_max_pixels(processor, sample_video_bytes, vlm):
    request = InferRequest(messages=user("<video>Describe the video"), videos=[sample_video_bytes])
    # 3 s at 2 fps = 6 frames -> 3 temporal patches; 96x64 frames -> 56x84 at these bounds -> 2x3 tokens each.
    inputs = encoder(processor, video_max_pixels=FACTOR * FACTOR * 6, video_min_pixels=FACTOR * FACTOR).encode(request)
    t = inputs.tensors
    h, w = smart_resize(64, 96, FACTOR, FACTOR * FACTOR, FACTOR * FACTOR * 6)
    assert t["video_grid_thw"].tolist() == [[3, h // 14, w // 14]]
    assert visual_tokens(processor, inputs, "video") == 3 * (h // FACTOR) * (w // FACTOR)
    assert t["second_per_grid_ts"].tolist() == pytest.approx([1.0])  # 2 frames per patch at 2 fps
    assert (t["mm_token_type_ids"][0] == 2).sum() == visual_tokens(processor, inputs, "video")
    fewer = encoder(processor, fps_max_frames=2, video_max_pixels=FACTOR * FACTOR * 6,
                    video_min_pixels=FACTOR * FACTOR).encode(request)
    assert fewer.tensors["video_grid_thw"].tolist() == [[1, h // 14, w // 14]]
    with torch.inference_mode():
        logits = vlm(**t).logits
    assert torch.isfinite(logits).all()


def test_video_patches_match_the_image_processor_for_still_frames(processor):
    # Two identical frames make one temporal patch that must equal the image processor's (which tiles in time).
    frame = (np.random.default_rng(0).random((84, 112, 3)) * 255).astype(np.uint8)
    still = [Image.fromarray(frame)] * 2
    enc = encoder(processor, video_max_pixels=FACTOR * FACTOR * 64, video_min_pixels=FACTOR * FACTOR * 4)
    video = enc.encode(InferRequest(messages=user("<video>"), videos=[still])).tensors
    image = processor.image_processor(images=[Image.fromarray(frame)], return_tensors="pt")
    assert video["video_grid_thw"].tolist() == image["image_grid_thw"].tolist()
    assert torch.allclose(video["pixel_values_videos"], image["pixel_values"], atol=1e-5)


def test_image_and_video_together_and_generation(processor, vlm, sample_video_bytes):
    request = InferRequest(messages=user("<image><video>Same colours?"), images=[Image.new("RGB", (56, 56))],
                           videos=[sample_video_bytes])
    inputs = encoder(processor, video_max_pixels=FACTOR * FACTOR * 4).encode(request)
    out = vlm.generate(**inputs.tensors, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == len(inputs.input_ids) + 3


def test_rope_positions_are_3d_and_continue_after_the_prompt(processor, vlm):
    inputs = encoder(processor).encode(InferRequest(messages=user("<image>hi"), images=[Image.new("RGB", (112, 56))]))
    positions, delta = rope_positions(vlm, inputs)
    n = len(inputs.input_ids)
    assert positions.shape == (3, 1, n) and delta.shape == (1, 1)
    # Text after the image advances by one on every axis; the next token goes at max + 1 = n + delta.
    assert positions[:, 0, -1].tolist() == [int(positions.max())] * 3
    assert int(positions.max()) + 1 == n + int(delta)
    image_pos = positions[:, 0, inputs.tensors["mm_token_type_ids"][0] == 1]
    assert image_pos[1].unique().numel() == 2 and image_pos[2].unique().numel() == 4  # 2x4 token grid


def test_encode_async_runs_off_the_loop(processor):
    import asyncio

    inputs = asyncio.run(encoder(processor).encode_async(
        InferRequest(messages=user("<image>"), images=[Image.new("RGB", (56, 56))])))
    assert visual_tokens(processor, inputs) == math.prod([2, 2])


@pytest.mark.parametrize("kind", ["image", "video"])
def test_chunked_prefill_with_prompt_embeddings_matches_a_full_forward(processor, vlm, kind):
    """What the pt engine does with a VLM: vision once, then prefill chunks (one cutting an image in two) over a
    cache with sliced embeddings and M-RoPE positions, then a decode step at index + rope_delta."""
    from transformers import DynamicCache

    picture = Image.new("RGB", (112, 84), (9, 99, 199))
    media = {"images": [picture]} if kind == "image" else {"videos": [[picture, Image.new("RGB", (112, 84))] * 2]}
    request = InferRequest(messages=user(f"<{kind}>What is this?"), **media)
    inputs = encoder(processor, video_max_pixels=FACTOR * FACTOR * 12).encode(request)
    with torch.inference_mode():
        full = vlm(**inputs.tensors).logits[0]
        embeds = prompt_embeddings(vlm, inputs)
        positions, delta = rope_positions(vlm, inputs)
        # [4, 1, S]: row 0 the plain token index (Qwen2-VL's text model reads it as packed positions), rows 1-3 (t, h, w)
        positions4 = torch.cat([torch.arange(positions.shape[-1]).view(1, 1, -1), positions])
        cache, n = DynamicCache(config=vlm.config), len(inputs.input_ids)
        token_id = processor.image_token_id if kind == "image" else processor.video_token_id
        image_at = inputs.input_ids.index(token_id)
        chunks, logits = [(0, image_at + 3), (image_at + 3, n)], []
        for start, end in chunks:
            out = vlm(inputs_embeds=embeds[None, start:end], position_ids=positions4[:, :, start:end],
                      past_key_values=cache, use_cache=True)
            logits.append(out.logits[0])
        assert torch.allclose(torch.cat(logits), full, atol=1e-4)
        # Decode: the next token sits at sequence index n, rope position n + delta on all three axes.
        token = int(full[-1].argmax())
        step = torch.tensor([n + int(delta)]).view(1, 1, 1).expand(3, 1, 1)
        step4 = torch.cat([torch.tensor([[[n]]]), step])
        decoded = vlm(input_ids=torch.tensor([[token]]), position_ids=step4, past_key_values=cache).logits[0, -1]
        reference = vlm(input_ids=torch.tensor([inputs.input_ids + [token]]),
                        **{k: v for k, v in inputs.tensors.items() if k not in ("input_ids", "attention_mask",
                                                                                "mm_token_type_ids")},
                        mm_token_type_ids=torch.cat([inputs.tensors["mm_token_type_ids"], torch.zeros(1, 1,
                                                                                                    dtype=torch.long)], 1)
                        ).logits[0, -1]
        assert torch.allclose(decoded, reference, atol=1e-4)


def test_multimodal_models_are_told_apart(tiny_vlm_dir, tiny_model_dir):
    from swiftops.template.processor_loader import is_multimodal_model

    assert is_multimodal_model(str(tiny_vlm_dir)) and not is_multimodal_model(str(tiny_model_dir))


def test_tiny_vlm_loads_with_the_auto_classes_offline(tiny_vlm_dir, processor):
    from transformers import AutoModelForImageTextToText

    from swiftops.template.processor_loader import torchvision_available

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    # Without torchvision (this CPU machine) the processor has no video processor; videos go through frames.
    assert (processor.video_processor is None) == (not torchvision_available())
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


def test_openai_video_url_part_with_base64_video(processor, sample_video_bytes):
    """The seed's `openai` client example: a base64 mp4 in a video_url content part."""
    encoded = base64.b64encode(sample_video_bytes).decode()
    wire = ChatCompletionRequest(messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{encoded}"}},
        {"type": "text", "text": "Describe this video."}]}])
    inputs = MultimodalEncoder(processor, limits=MediaLimits(video_max_pixels=FACTOR * FACTOR * 4),
                               policy=MediaPolicy.for_server()).encode(wire.to_infer_request())
    assert inputs.counts["video"] == 1 and inputs.tensors["video_grid_thw"][0, 0] == 3
    assert inputs.prompt.index("<|video_pad|>") < inputs.prompt.index("Describe this video.")
