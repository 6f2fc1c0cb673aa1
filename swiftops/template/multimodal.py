"""Turning a multimodal `InferRequest` into the processor's model inputs.

Two ways to attach media, as in ms-swift, both reduced to one internal form (text with `<image>`,
`<video>`, `<audio>` tags plus per-kind media lists, in tag order):

* tags in the text and top-level lists: `messages=[{"role": "user", "content": "<image><image>What differs?"}],
  images=[a, b]` (media given without any tag of their kind go in front of the first user message);
* OpenAI content parts: `image_url` (a URL string or `{url}`), `image`, `video`, `video_url`, `audio`,
  `audio_url`, `input_audio` (`{data, format}`).

Then: limits per prompt, media loaded (`swiftops.media`), messages rewritten into the processor's
content-part form (`{"type": "image"}`...), the model's own chat template applied through
`processor.apply_chat_template`, and `processor(text=..., images=..., videos=..., audio=...)` called.
For Qwen2-VL-style processors without a video processor (transformers builds it on torchvision only),
`pixel_values_videos` are built here from the decoded frames with the image processor's own resize and
normalisation (`video_inputs`).
"""
from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from swiftops.media.audio import DEFAULT_SAMPLING_RATE, load_audio
from swiftops.media.image import load_image
from swiftops.media.limits import MediaLimits
from swiftops.media.policy import MediaPolicy
from swiftops.media.video import VideoClip, load_video
from swiftops.protocol import BadRequestError, InferRequest
from swiftops.template.chat_template import normalize_messages

KINDS = ("image", "video", "audio")
TAG = {kind: f"<{kind}>" for kind in KINDS}
_TAG_SPLIT = re.compile(r"(<image>|<video>|<audio>)")
# The processor outputs that carry the prompt itself; everything else goes to the model's forward as is.
TEXT_KEYS = ("input_ids", "attention_mask")
# A Qwen2-VL vocabulary token no chat template emits; stands in for a video while the processor runs.
VIDEO_SLOT = "<|vision_pad|>"


@dataclass
class MediaConversation:
    """The internal form: messages whose text holds media tags, and the media of each kind in tag order."""

    messages: list[dict[str, Any]]
    media: dict[str, list[Any]] = field(default_factory=lambda: {kind: [] for kind in KINDS})

    @property
    def counts(self) -> dict[str, int]:
        return {kind: len(items) for kind, items in self.media.items()}


# ---- content parts -> tags ------------------------------------------------------------------------
def _part_media(part: dict[str, Any]) -> tuple[str, Any]:
    """(kind, item) of a media content part; raises for a malformed one."""
    kind = part.get("type")
    if kind == "image_url" or kind == "video_url" or kind == "audio_url":
        value = part.get(kind)
        item = value.get("url") if isinstance(value, dict) else value
        kind = kind[:-4]
    elif kind == "input_audio":
        value = part.get("input_audio") or {}
        data = value.get("data") if isinstance(value, dict) else None
        # OpenAI sends bare base64 plus a format; a data: URI keeps the format for the decoder.
        fmt = value.get("format", "wav") if isinstance(value, dict) else "wav"
        item = f"data:audio/{fmt};base64,{data}" if data and not str(data).startswith("data:") else data
        kind = "audio"
    elif kind in KINDS:
        item = part.get(kind)
        if item is None and kind == "image":
            item = part.get("image_url") or part.get("url")
    else:
        raise BadRequestError(f"unknown content part type {kind!r}; use text, image_url, image, video, video_url, "
                              f"audio, audio_url or input_audio", param="messages")
    if isinstance(item, dict):
        item = item.get("url", item)
    if item is None or item == "":
        raise BadRequestError(f"a {part.get('type')!r} content part has no media in it", param="messages")
    return kind, item


def extract_media(request: InferRequest) -> MediaConversation:
    """Content parts become tags; each tag gets its media in order; counts of tags and media must match."""
    pending = {"image": list(request.images), "video": list(request.videos), "audio": list(request.audios)}
    tag_count = {kind: 0 for kind in KINDS}
    conversation = MediaConversation(messages=[])
    ordered: dict[str, list[tuple[int, Any]]] = {kind: [] for kind in KINDS}  # (order, item); None: from the list

    def take_tags(text: str) -> None:
        for kind in KINDS:
            n = text.count(TAG[kind])
            for _ in range(n):
                ordered[kind].append((tag_count[kind], None))
                tag_count[kind] += 1

    for i, message in enumerate(request.messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            pieces = []
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequestError(f"messages[{i}].content holds a {type(part).__name__}; content parts are "
                                          "objects with a 'type'", param=f"messages[{i}].content")
                if part.get("type") == "text":
                    text = str(part.get("text", ""))
                    take_tags(text)
                    pieces.append(text)
                else:
                    kind, item = _part_media(part)
                    ordered[kind].append((tag_count[kind], item))
                    tag_count[kind] += 1
                    pieces.append(TAG[kind])
            message = {**message, "content": "".join(pieces)}
        elif isinstance(content, str):
            take_tags(content)
        conversation.messages.append(message)

    for kind in KINDS:
        from_list = [slot for slot in ordered[kind] if slot[1] is None]
        given = pending[kind]
        if not from_list and given and not ordered[kind]:
            _prepend_tags(conversation.messages, TAG[kind] * len(given))
            conversation.media[kind] = given
            continue
        if len(from_list) != len(given):
            raise BadRequestError(
                f"the messages have {len(from_list)} {TAG[kind]} tag(s) but {len(given)} {kind}(s) were given in "
                f"`{kind}s`; give one {kind} per {TAG[kind]} tag", param=f"{kind}s", code="media_count_mismatch")
        supply = iter(given)
        conversation.media[kind] = [next(supply) if item is None else item for _, item in ordered[kind]]
    return conversation


def _prepend_tags(messages: list[dict[str, Any]], tags: str) -> None:
    """ms-swift's default: media without tags go in front of the first user message."""
    for message in messages:
        if message.get("role") == "user":
            message["content"] = tags + (message.get("content") or "")
            return
    raise BadRequestError("media were given but there is no user message to attach them to", param="messages")


def check_media_limits(counts: Mapping[str, int], limit_mm_per_prompt: Optional[Mapping[str, int]]) -> None:
    """`--limit_mm_per_prompt '{"image": 5, "video": 2}'`: a request over a limit is a 400."""
    for kind, limit in (limit_mm_per_prompt or {}).items():
        if counts.get(kind, 0) > limit:
            raise BadRequestError(f"the request has {counts[kind]} {kind}s but this server takes at most {limit} per "
                                  f"prompt (--limit_mm_per_prompt); send fewer", param=f"{kind}s",
                                  code="too_many_media")


# ---- tags -> the processor's content parts ----------------------------------------------------------
def to_processor_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with tags become content-part lists (`{"type": "image"}`, `{"type": "text", ...}`), the form
    processors' chat templates expect; messages without tags stay strings (every template takes those)."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and _TAG_SPLIT.search(content):
            parts = []
            for piece in _TAG_SPLIT.split(content):
                if piece in ("<image>", "<video>", "<audio>"):
                    parts.append({"type": piece[1:-1]})
                elif piece:
                    parts.append({"type": "text", "text": piece})
            message = {**message, "content": parts}
        out.append(message)
    return out


# ---- videos for Qwen2-VL-style processors without a video processor ---------------------------------
def _is_qwen_style(image_processor: Any) -> bool:
    return all(hasattr(image_processor, a) for a in ("patch_size", "merge_size", "temporal_patch_size"))


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / max(1, min(height, width)) > 200:
        raise BadRequestError(f"a {width}x{height} video frame is too elongated (aspect ratio over 200)",
                              param="videos")
    h_bar, w_bar = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_inputs(clip: VideoClip, image_processor: Any, min_pixels: int, max_pixels: int) -> tuple[np.ndarray, list[int]]:
    """(pixel_values_videos [grid_t*grid_h*grid_w, C*tp*p*p], [grid_t, grid_h, grid_w]) as Qwen2-VL's video
    processor lays them out, computed with numpy + PIL (resize: bicubic, like the image processor)."""
    from PIL import Image

    patch, merge, temporal = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    frames = clip.frames  # [T, H, W, 3] uint8
    height, width = smart_resize(frames.shape[1], frames.shape[2], patch * merge, min_pixels, max_pixels)
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)
    std = np.asarray(image_processor.image_std, dtype=np.float32)
    scale = float(getattr(image_processor, "rescale_factor", 1 / 255))
    resized = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC))
                        for f in frames]).astype(np.float32)
    video = ((resized * scale - mean) / std).transpose(0, 3, 1, 2)  # [T, C, H, W]
    if pad := -video.shape[0] % temporal:  # an odd frame count repeats the last frame
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    t, c = video.shape[0] // temporal, video.shape[1]
    gh, gw = height // patch, width // patch
    patches = video.reshape(t, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h-blocks, w-blocks, merge rows/cols, C, tp, p, p
    return np.ascontiguousarray(patches.reshape(t * gh * gw, c * temporal * patch * patch)), [t, gh, gw]


# ---- the encoder ----------------------------------------------------------------------------------------
@dataclass
class MultimodalInputs:
    """One prompt ready for the model. `tensors` is the processor's output with a batch of one:
    input_ids / attention_mask [1, S], mm_token_type_ids [1, S] (0 text, 1 image, 2 video, 3 audio),
    pixel_values [N_patches, D] + image_grid_thw [n_images, 3], pixel_values_videos + video_grid_thw
    [n_videos, 3] (+ second_per_grid_ts [n_videos] for Qwen2.5-VL), input_features for audio models."""

    input_ids: list[int]
    tensors: dict[str, Any]
    prompt: str
    counts: dict[str, int]

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward besides input_ids / attention_mask (pixels, grids, types)."""
        return {k: v for k, v in self.tensors.items() if k not in TEXT_KEYS}


class MultimodalEncoder:
    """`encoder.encode(request)` -> `MultimodalInputs`, with a processor, limits and a media policy."""

    def __init__(self, processor: Any, limits: Optional[MediaLimits] = None, policy: Optional[MediaPolicy] = None,
                 limit_mm_per_prompt: Optional[Mapping[str, int]] = None, default_system: Optional[str] = None):
        self.processor = processor
        self.limits = limits or MediaLimits.resolve()
        self.policy = policy or MediaPolicy()
        self.limit_mm_per_prompt = dict(limit_mm_per_prompt or {})
        self.default_system = default_system

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> "MultimodalEncoder":
        from swiftops.template.processor_loader import load_processor

        return cls(load_processor(path), **kwargs)

    @staticmethod
    def has_media(request: InferRequest) -> bool:
        if request.images or request.videos or request.audios:
            return True
        return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") != "text"
                                                               for p in m["content"]) for m in request.messages)

    # -- stages --
    def render(self, conversation: MediaConversation, request: InferRequest) -> str:
        messages = normalize_messages(conversation.messages, self.default_system)
        if messages[-1]["role"] == "assistant":
            raise BadRequestError("the last message is from the assistant; end the conversation with a user message "
                                  "to get an answer", param="messages")
        tools = request.tools if request.tools and request.tool_choice != "none" else None
        template_owner = self.processor if getattr(self.processor, "chat_template", None) else self.processor.tokenizer
        try:
            return template_owner.apply_chat_template(to_processor_messages(messages), tools=tools, tokenize=False,
                                                      add_generation_prompt=True)
        except Exception as exc:  # jinja errors from the model's own template
            raise BadRequestError(f"the model's chat template rejected the conversation: {exc}",
                                  param="messages") from exc

    def load(self, conversation: MediaConversation) -> dict[str, list[Any]]:
        image_processor = getattr(self.processor, "image_processor", None)
        # Qwen-style processors resize by pixel bounds themselves; others get images already bounded here.
        max_pixels = None if _is_qwen_style(image_processor) else self.limits.max_pixels
        rate = getattr(getattr(self.processor, "feature_extractor", None), "sampling_rate", DEFAULT_SAMPLING_RATE)
        return {"image": [load_image(item, self.policy, max_pixels) for item in conversation.media["image"]],
                "video": [load_video(item, self.policy, self.limits) for item in conversation.media["video"]],
                "audio": [load_audio(item, self.policy, rate) for item in conversation.media["audio"]]}

    def _image_kwargs(self, image_processor: Any, video: bool = False) -> dict[str, Any]:
        size = dict(getattr(image_processor, "size", None) or {})
        lo = self.limits.video_min_pixels if video else self.limits.min_pixels
        hi = self.limits.video_max_pixels if video else self.limits.max_pixels
        if lo is None and hi is None or "longest_edge" not in size:
            return {}
        return {"size": {"shortest_edge": lo or size["shortest_edge"], "longest_edge": hi or size["longest_edge"]}}

    def _video_by_frames(self, clips: list[VideoClip]) -> dict[str, Any]:
        """pixel_values_videos and video_grid_thw from decoded frames (no torchvision needed)."""
        import torch

        image_processor = self.processor.image_processor
        size = dict(image_processor.size)
        lo = self.limits.video_min_pixels or size["shortest_edge"]
        hi = self.limits.video_max_pixels or size["longest_edge"]
        patches, grids = zip(*(video_inputs(clip, image_processor, lo, hi) for clip in clips))
        out = {"pixel_values_videos": torch.from_numpy(np.concatenate(patches)),
               "video_grid_thw": torch.tensor(grids, dtype=torch.long)}
        if "second_per_grid_ts" in getattr(self.processor, "model_input_names", []):
            out["second_per_grid_ts"] = torch.tensor(
                [image_processor.temporal_patch_size / clip.sampled_fps for clip in clips], dtype=torch.float32)
        return out

    def _expand_video_slots(self, tensors: dict[str, Any], video: dict[str, Any]) -> dict[str, Any]:
        """Each `VIDEO_SLOT` token becomes the video's run of video tokens (what the processor does for videos)."""
        import torch

        tokenizer = self.processor.tokenizer
        slot, token = tokenizer.convert_tokens_to_ids(VIDEO_SLOT), self.processor.video_token_id
        merge = self.processor.image_processor.merge_size ** 2
        counts = iter((video["video_grid_thw"].prod(-1) // merge).tolist())
        ids: list[int] = []
        for i in tensors["input_ids"][0].tolist():
            ids.extend([token] * next(counts) if i == slot else [i])
        tensors["input_ids"] = torch.tensor([ids], dtype=torch.long)
        tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
        if "mm_token_type_ids" in tensors:
            tensors["mm_token_type_ids"] = torch.tensor(self.processor.create_mm_token_type_ids([ids]),
                                                        dtype=tensors["mm_token_type_ids"].dtype)
        return {**tensors, **video}

    def process(self, prompt: str, media: dict[str, list[Any]]) -> dict[str, Any]:
        processor = self.processor
        kwargs: dict[str, Any] = {"return_tensors": "pt"}
        video: dict[str, Any] = {}
        if media["image"]:
            kwargs["images"] = media["image"]
            if image_kwargs := self._image_kwargs(processor.image_processor):
                kwargs["images_kwargs"] = image_kwargs
        if media["video"]:
            if getattr(processor, "video_processor", None) is None and _is_qwen_style(processor.image_processor):
                # The processor refuses video tokens without videos: each video's placeholder becomes a slot
                # token (unused by the template) that `_expand_video_slots` swaps for the video's tokens.
                if prompt.count(processor.video_token) != len(media["video"]) or VIDEO_SLOT in prompt:
                    raise BadRequestError("the prompt's video placeholders do not match the videos given",
                                          param="videos")
                prompt = prompt.replace(processor.video_token, VIDEO_SLOT)
                video = self._video_by_frames(media["video"])
            else:
                kwargs["videos"] = [clip.frames for clip in media["video"]]
                video_kwargs: dict[str, Any] = {"do_sample_frames": False, "video_metadata": [
                    {"fps": clip.sampled_fps, "total_num_frames": clip.num_frames,
                     "frames_indices": list(range(clip.num_frames))} for clip in media["video"]]}
                if video_size := self._image_kwargs(processor.video_processor, video=True):
                    video_kwargs.update(video_size)
                kwargs["videos_kwargs"] = video_kwargs
        if media["audio"]:
            kwargs["audio"] = media["audio"]
            rate = getattr(getattr(processor, "feature_extractor", None), "sampling_rate", DEFAULT_SAMPLING_RATE)
            kwargs["audio_kwargs"] = {"sampling_rate": rate}
        try:
            tensors = dict(processor(text=[prompt], **kwargs))
        except BadRequestError:
            raise
        except (ValueError, TypeError) as exc:
            raise BadRequestError(f"the model's processor rejected the media: {exc}", param="messages") from exc
        return self._expand_video_slots(tensors, video) if video else tensors

    def encode(self, request: InferRequest) -> MultimodalInputs:
        """Everything for one request, synchronously (fetching and decoding may take a while: see encode_async)."""
        if request.prompt is not None:
            raise BadRequestError("a raw prompt cannot carry media; send messages with media tags or content parts",
                                  param="prompt")
        conversation = extract_media(request)
        check_media_limits(conversation.counts, self.limit_mm_per_prompt)
        prompt = self.render(conversation, request)
        tensors = self.process(prompt, self.load(conversation))
        return MultimodalInputs(input_ids=tensors["input_ids"][0].tolist(), tensors=tensors, prompt=prompt,
                                counts=conversation.counts)

    async def encode_async(self, request: InferRequest) -> MultimodalInputs:
        """`encode` on a worker thread, so URL fetches and video decoding do not stall the engine's event loop."""
        return await asyncio.to_thread(self.encode, request)


def rope_positions(model: Any, inputs: MultimodalInputs) -> tuple[Any, Any]:
    """Qwen2-VL / Qwen2.5-VL's 3-D (M-RoPE) position ids of a prompt: (position_ids [3, 1, S], rope_delta [1, 1]).

    Token i of the prompt sits at position_ids[:, 0, i]; a generated token at sequence index j >= S sits at
    j + rope_delta on all three axes. `model` is the *ForConditionalGeneration (or its `.model`).
    """
    base = getattr(model, "model", model)
    t = inputs.tensors
    kwargs = {k: t[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if k in t}
    return base.get_rope_index(t["input_ids"], mm_token_type_ids=t["mm_token_type_ids"],
                               attention_mask=t.get("attention_mask"), **kwargs)


def prompt_embeddings(model: Any, inputs: MultimodalInputs) -> Any:
    """The prompt's input embeddings [S, hidden] with the vision features in place of the image/video tokens.

    Computed once per request (the vision tower runs once), then sliced per prefill chunk: a chunk may
    end in the middle of an image. Feed `model(inputs_embeds=embeds[None, start:end], position_ids=...)`.
    """
    import torch

    base = getattr(model, "model", model)
    embed = model.get_input_embeddings()
    t = inputs.tensors
    device, dtype = embed.weight.device, embed.weight.dtype
    ids = t["input_ids"].to(device)
    with torch.inference_mode():
        embeds = embed(ids)[0]  # [S, hidden]
        for pixels, grid, token in (("pixel_values", "image_grid_thw", base.config.image_token_id),
                                    ("pixel_values_videos", "video_grid_thw", base.config.video_token_id)):
            if pixels not in t:
                continue
            getter = base.get_image_features if pixels == "pixel_values" else base.get_video_features
            features = getter(t[pixels].to(device), t[grid].to(device), return_dict=True).pooler_output
            embeds[ids[0] == token] = torch.cat(features).to(dtype)
    return embeds


def packed_positions(positions: Any) -> Any:
    """[3, 1, S] M-RoPE positions -> [4, 1, S]: row 0 the plain token index, which Qwen2-VL's text model reads
    as "packed" positions (one row holding several sequences), rows 1-3 the (t, h, w) positions."""
    import torch

    index = torch.arange(positions.shape[-1], device=positions.device).view(1, 1, -1)
    return torch.cat([index, positions])
