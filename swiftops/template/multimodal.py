"""Turning a multimodal `InferRequest` into the processor's model inputs.

The request is first reduced to its internal form (`swiftops.template.media_tags`: tags plus media
lists, from tags or OpenAI content parts). Then: limits per prompt, media loaded (`swiftops.media`),
messages rewritten into the processor's content-part form (`{"type": "image"}`...), the model's own chat
template applied through
`processor.apply_chat_template`, and `processor(text=..., images=..., videos=..., audio=...)` called.
For Qwen2-VL-style processors without a video processor (transformers builds it on torchvision only),
`pixel_values_videos` are built here from the decoded frames with the image processor's own resize and
normalisation (`swiftops.template.qwen_video`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from swiftops.media.audio import DEFAULT_SAMPLING_RATE, load_audio
from swiftops.media.image import load_image
from swiftops.media.limits import MediaLimits
from swiftops.media.policy import MediaPolicy
from swiftops.media.video import VideoClip, load_video
from swiftops.protocol import BadRequestError, InferRequest
from swiftops.template.chat_template import normalize_messages
from swiftops.template.media_tags import (
    KINDS,
    TAG,
    MediaConversation,
    check_media_limits,
    extract_media,
    to_processor_messages,
)
from swiftops.template.qwen_video import is_qwen_style, smart_resize, video_inputs

__all__ = [
    "KINDS",
    "TAG",
    "MediaConversation",
    "MultimodalEncoder",
    "MultimodalInputs",
    "check_media_limits",
    "extract_media",
    "smart_resize",
    "to_processor_messages",
    "video_inputs",
]

# The processor outputs that carry the prompt itself; everything else goes to the model's forward as is.
TEXT_KEYS = ("input_ids", "attention_mask")
# A Qwen2-VL vocabulary token no chat template emits; stands in for a video while the processor runs.
VIDEO_SLOT = "<|vision_pad|>"


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

    def image_sizes(self, processor: Any) -> list[tuple[int, int]]:
        """(width, height) of each image as the model saw it: its patch grid times the patch size (Qwen-VL)."""
        grid = self.tensors.get("image_grid_thw")
        patch = getattr(getattr(processor, "image_processor", None), "patch_size", None)
        if grid is None or not patch:
            return []
        return [(int(w) * patch, int(h) * patch) for _, h, w in grid.tolist()]

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward besides input_ids / attention_mask (pixels, grids, types)."""
        return {k: v for k, v in self.tensors.items() if k not in TEXT_KEYS}


class MultimodalEncoder:
    """`encoder.encode(request)` -> `MultimodalInputs`, with a processor, limits and a media policy."""

    def __init__(
        self,
        processor: Any,
        limits: MediaLimits | None = None,
        policy: MediaPolicy | None = None,
        limit_mm_per_prompt: Mapping[str, int] | None = None,
        default_system: str | None = None,
    ):
        self.processor = processor
        self.limits = limits or MediaLimits.resolve()
        self.policy = policy or MediaPolicy()
        self.limit_mm_per_prompt = dict(limit_mm_per_prompt or {})
        self.default_system = default_system

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> MultimodalEncoder:
        from swiftops.template.processor_loader import load_processor

        return cls(load_processor(path), **kwargs)

    @staticmethod
    def has_media(request: InferRequest) -> bool:
        if request.images or request.videos or request.audios:
            return True
        return any(
            isinstance(m.get("content"), list)
            and any(isinstance(p, dict) and p.get("type") != "text" for p in m["content"])
            for m in request.messages
        )

    # -- stages --
    def render(self, conversation: MediaConversation, request: InferRequest) -> str:
        messages = normalize_messages(conversation.messages, self.default_system)
        if messages[-1]["role"] == "assistant":
            raise BadRequestError(
                "the last message is from the assistant; end the conversation with a user message to get an answer",
                param="messages",
            )
        tools = request.tools if request.tools and request.tool_choice != "none" else None
        template_owner = self.processor if getattr(self.processor, "chat_template", None) else self.processor.tokenizer
        try:
            return template_owner.apply_chat_template(
                to_processor_messages(messages), tools=tools, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja errors from the model's own template
            raise BadRequestError(
                f"the model's chat template rejected the conversation: {exc}", param="messages"
            ) from exc

    def load(self, conversation: MediaConversation) -> dict[str, list[Any]]:
        image_processor = getattr(self.processor, "image_processor", None)
        # Qwen-style processors resize by pixel bounds themselves; others get images already bounded here.
        max_pixels = None if is_qwen_style(image_processor) else self.limits.max_pixels
        rate = getattr(getattr(self.processor, "feature_extractor", None), "sampling_rate", DEFAULT_SAMPLING_RATE)
        return {
            "image": [load_image(item, self.policy, max_pixels) for item in conversation.media["image"]],
            "video": [load_video(item, self.policy, self.limits) for item in conversation.media["video"]],
            "audio": [load_audio(item, self.policy, rate) for item in conversation.media["audio"]],
        }

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
        patches, grids = zip(*(video_inputs(clip, image_processor, lo, hi) for clip in clips), strict=False)
        out = {
            "pixel_values_videos": torch.from_numpy(np.concatenate(patches)),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
        }
        if "second_per_grid_ts" in getattr(self.processor, "model_input_names", []):
            out["second_per_grid_ts"] = torch.tensor(
                [image_processor.temporal_patch_size / clip.sampled_fps for clip in clips], dtype=torch.float32
            )
        return out

    def _expand_video_slots(self, tensors: dict[str, Any], video: dict[str, Any]) -> dict[str, Any]:
        """Each `VIDEO_SLOT` token becomes the video's run of video tokens (what the processor does for videos)."""
        import torch

        tokenizer = self.processor.tokenizer
        slot, token = tokenizer.convert_tokens_to_ids(VIDEO_SLOT), self.processor.video_token_id
        merge = self.processor.image_processor.merge_size**2
        counts = iter((video["video_grid_thw"].prod(-1) // merge).tolist())
        ids: list[int] = []
        for i in tensors["input_ids"][0].tolist():
            ids.extend([token] * next(counts) if i == slot else [i])
        tensors["input_ids"] = torch.tensor([ids], dtype=torch.long)
        tensors["attention_mask"] = torch.ones_like(tensors["input_ids"])
        if "mm_token_type_ids" in tensors:
            tensors["mm_token_type_ids"] = torch.tensor(
                self.processor.create_mm_token_type_ids([ids]), dtype=tensors["mm_token_type_ids"].dtype
            )
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
            if getattr(processor, "video_processor", None) is None and is_qwen_style(processor.image_processor):
                # The processor refuses video tokens without videos: each video's placeholder becomes a slot
                # token (unused by the template) that `_expand_video_slots` swaps for the video's tokens.
                if prompt.count(processor.video_token) != len(media["video"]) or VIDEO_SLOT in prompt:
                    raise BadRequestError(
                        "the prompt's video placeholders do not match the videos given", param="videos"
                    )
                prompt = prompt.replace(processor.video_token, VIDEO_SLOT)
                video = self._video_by_frames(media["video"])
            else:
                kwargs["videos"] = [clip.frames for clip in media["video"]]
                video_kwargs: dict[str, Any] = {
                    "do_sample_frames": False,
                    "video_metadata": [
                        {
                            "fps": clip.sampled_fps,
                            "total_num_frames": clip.num_frames,
                            "frames_indices": list(range(clip.num_frames)),
                        }
                        for clip in media["video"]
                    ],
                }
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
            raise BadRequestError(
                "a raw prompt cannot carry media; send messages with media tags or content parts", param="prompt"
            )
        conversation = extract_media(request)
        check_media_limits(conversation.counts, self.limit_mm_per_prompt)
        prompt = self.render(conversation, request)
        tensors = self.process(prompt, self.load(conversation))
        return MultimodalInputs(
            input_ids=tensors["input_ids"][0].tolist(), tensors=tensors, prompt=prompt, counts=conversation.counts
        )

    async def encode_async(self, request: InferRequest) -> MultimodalInputs:
        """`encode` on a worker thread, so URL fetches and video decoding do not stall the engine's event loop."""
        return await asyncio.to_thread(self.encode, request)
