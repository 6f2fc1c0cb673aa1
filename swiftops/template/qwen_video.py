"""Qwen2-VL's video patches from decoded frames, with numpy and PIL (no torchvision).

transformers builds Qwen2-VL's video processor on torchvision only; this lays out `pixel_values_videos`
exactly as it does (frames resized to multiples of 28 within the pixel bounds, normalised, paired into
temporal patches, 2x2 merge blocks contiguous), with the image processor's own resize and statistics.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from swiftops.media.video import VideoClip
from swiftops.protocol import BadRequestError


def is_qwen_style(image_processor: Any) -> bool:
    return all(hasattr(image_processor, a) for a in ("patch_size", "merge_size", "temporal_patch_size"))


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / max(1, min(height, width)) > 200:
        raise BadRequestError(
            f"a {width}x{height} video frame is too elongated (aspect ratio over 200)", param="videos"
        )
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


def video_inputs(
    clip: VideoClip, image_processor: Any, min_pixels: int, max_pixels: int
) -> tuple[np.ndarray, list[int]]:
    """(pixel_values_videos [grid_t*grid_h*grid_w, C*tp*p*p], [grid_t, grid_h, grid_w]) as Qwen2-VL's video
    processor lays them out, computed with numpy + PIL (resize: bicubic, like the image processor)."""
    from PIL import Image

    patch, merge, temporal = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    frames = clip.frames  # [T, H, W, 3] uint8
    height, width = smart_resize(frames.shape[1], frames.shape[2], patch * merge, min_pixels, max_pixels)
    mean = np.asarray(image_processor.image_mean, dtype=np.float32)
    std = np.asarray(image_processor.image_std, dtype=np.float32)
    scale = float(getattr(image_processor, "rescale_factor", 1 / 255))
    resized = np.stack(
        [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BICUBIC)) for f in frames]
    ).astype(np.float32)
    video = ((resized * scale - mean) / std).transpose(0, 3, 1, 2)  # [T, C, H, W]
    if pad := -video.shape[0] % temporal:  # an odd frame count repeats the last frame
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    t, c = video.shape[0] // temporal, video.shape[1]
    gh, gw = height // patch, width // patch
    patches = video.reshape(t, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # t, h-blocks, w-blocks, merge rows/cols, C, tp, p, p
    return np.ascontiguousarray(patches.reshape(t * gh * gw, c * temporal * patch * patch)), [t, gh, gw]
