"""A tiny random Qwen2.5-VL (or Qwen2-VL) with a real processor, for tests and demos. Built offline on CPU.

The directory loads with `AutoProcessor` + `AutoModelForImageTextToText` like a real checkpoint: the
tokenizer is swiftops' tiny byte-level BPE extended with Qwen's vision special tokens, the image
processor is Qwen2-VL's (saved under the class name that picks the torchvision backend where it is
installed and the PIL backend where it is not), the chat template is Qwen2-VL's own, and a video
processor config is written for machines with torchvision (the CPU test machine has none).
"""

from __future__ import annotations

import json
import pathlib
from typing import Literal

from swiftops.models.tiny import MARKER_FILE, build_generation_config, progress_bars_off, train_tokenizer

VlmArch = Literal["qwen2_5_vl", "qwen2_vl"]
VLM_ARCHES: tuple[str, ...] = ("qwen2_5_vl", "qwen2_vl")

# Qwen2-VL's vision and grounding tokens, in the order the real tokenizer lists them.
VISION_TOKENS = (
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Pixel bounds small enough that a test image is a handful of visual tokens (one token: 28x28 pixels).
MIN_PIXELS = 28 * 28 * 4
MAX_PIXELS = 28 * 28 * 64
VIDEO_MAX_PIXELS = 28 * 28 * 16

TEXT_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=4096,
)
# head_dim 16: M-RoPE splits its 8 rotary frequencies over (time, height, width).
MROPE_SECTION = [2, 3, 3]
VISION_SHAPE = dict(
    depth=2, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3
)

# Qwen2-VL / Qwen2.5-VL-Instruct's chat template, verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def build_vlm_tokenizer():
    tokenizer = train_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": list(VISION_TOKENS)}, replace_extra_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_vlm_config(arch: VlmArch, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }
    text = dict(
        TEXT_SHAPE,
        vocab_size=len(tokenizer),
        rms_norm_eps=1e-6,
        initializer_range=0.5,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_SECTION},
    )
    if arch == "qwen2_5_vl":
        vision = dict(
            VISION_SHAPE,
            intermediate_size=64,
            out_hidden_size=TEXT_SHAPE["hidden_size"],
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
        config_class: type[Qwen2_5_VLConfig] | type[Qwen2VLConfig] = Qwen2_5_VLConfig
    else:
        vision = dict(VISION_SHAPE, embed_dim=32, mlp_ratio=2)
        vision["hidden_size"] = TEXT_SHAPE["hidden_size"]  # Qwen2-VL's merger projects embed_dim to hidden_size
        config_class = Qwen2VLConfig
    return config_class(text_config=text, vision_config=vision, tie_word_embeddings=False, dtype="float32", **ids)


def build_vlm_processor(arch: VlmArch, tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from swiftops.template.processor_loader import build_processor

    image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    processor_class = Qwen2_5_VLProcessor if arch == "qwen2_5_vl" else Qwen2VLProcessor
    # No video processor object: Qwen2-VL's needs torchvision. `_video_processor_config` is saved beside it.
    return build_processor(processor_class, image_processor, tokenizer, CHAT_TEMPLATE)


def _video_processor_config(arch: VlmArch) -> dict:
    return {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "processor_class": "Qwen2_5_VLProcessor" if arch == "qwen2_5_vl" else "Qwen2VLProcessor",
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_sample_frames": False,
    }


def _save_processor(processor, out: pathlib.Path) -> None:
    """What `processor.save_pretrained` writes (it cannot run with no video processor): the parts, the class name
    in each part's config (as in Qwen's repos) and the chat template."""
    name = type(processor).__name__
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    for file in ("tokenizer_config.json", "preprocessor_config.json"):
        config = json.loads((out / file).read_text())
        (out / file).write_text(json.dumps({**config, "processor_class": name}, indent=2) + "\n")
    (out / "processor_config.json").write_text(json.dumps({"processor_class": name}, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(processor.chat_template)


def build_tiny_vlm(out_dir: str | pathlib.Path, arch: VlmArch = "qwen2_5_vl", seed: int = 0) -> pathlib.Path:
    """Write a tiny random VLM (weights, tokenizer, processor, chat template) to `out_dir` and return its path."""
    import torch
    from transformers import AutoModelForImageTextToText

    from swiftops.protocol.errors import ConfigError

    if arch not in VLM_ARCHES:
        raise ConfigError(f"unknown tiny VLM arch {arch!r}; choose one of: {', '.join(VLM_ARCHES)}")
    out = pathlib.Path(out_dir).expanduser().resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_FILE).is_file():
        raise ConfigError(f"{out} is not empty and does not hold a tiny model; pass a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).write_text(json.dumps({"arch": arch, "seed": seed}, indent=2) + "\n")

    tokenizer = build_vlm_tokenizer()
    config = build_vlm_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    model.generation_config = build_generation_config(config.get_text_config())
    processor = build_vlm_processor(arch, tokenizer)
    with progress_bars_off():
        model.save_pretrained(out, safe_serialization=True)
    _save_processor(processor, out)
    (out / "video_preprocessor_config.json").write_text(json.dumps(_video_processor_config(arch), indent=2) + "\n")
    return out
