"""Videos from any media item, decoded with PyAV (FFmpeg) and sampled at `fps` frames per second.

No torchvision or decord: PyAV wheels carry FFmpeg. Sampling follows qwen-vl-utils (what ms-swift uses
for Qwen2-VL / Qwen2.5-VL): `duration * fps` frames, clamped to [FPS_MIN_FRAMES, FPS_MAX_FRAMES] and to the
frames the video has, rounded down to an even count (frames are paired into temporal patches), spread
evenly over the video. A video may also be given as a list of images (its frames, already sampled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from swiftops.media.budget import current_budget
from swiftops.media.container import open_container
from swiftops.media.limits import MediaLimits
from swiftops.media.policy import MediaPolicy
from swiftops.media.source import read_media
from swiftops.protocol.errors import BadRequestError

FRAME_FACTOR = 2  # frames per temporal patch in Qwen2-VL's vision tower
# Frames are shrunk while decoding to at most this many times the frame pixel bound (VIDEO_MAX_PIXELS, else
# Qwen2-VL's 28*28*768), so that 768 sampled 4K frames do not take gigabytes before the processor's own resize.
DECODE_PIXEL_MARGIN = 4
DEFAULT_VIDEO_MAX_PIXELS = 28 * 28 * 768
# A container without a frame count or duration is decoded whole before sampling: at most this many frames.
MAX_FRAMES_OF_UNKNOWN_LENGTH = 4 * 768


@dataclass
class VideoClip:
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB, the sampled frames
    sampled_fps: float  # frames per second of video time in `frames` (Qwen2.5-VL's temporal positions use it)
    source_fps: float
    total_frames: int  # frames in the source video
    indices: list[int]  # which source frames were kept

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        return self.total_frames / self.source_fps if self.source_fps else 0.0


def sample_count(total_frames: int, source_fps: float, limits: MediaLimits) -> int:
    """How many frames to keep: qwen-vl-utils' `smart_nframes`."""
    if total_frames < FRAME_FACTOR:
        return total_frames
    min_frames = math.ceil(limits.fps_min_frames / FRAME_FACTOR) * FRAME_FACTOR
    max_frames = math.floor(min(limits.fps_max_frames, total_frames) / FRAME_FACTOR) * FRAME_FACTOR
    wanted = total_frames / source_fps * limits.fps if source_fps > 0 else max_frames
    count = min(max(wanted, min_frames), max_frames, total_frames)
    return max(FRAME_FACTOR, math.floor(count / FRAME_FACTOR) * FRAME_FACTOR)


def sample_indices(total_frames: int, count: int) -> list[int]:
    if count <= 0:
        return []
    return [int(round(i)) for i in np.linspace(0, total_frames - 1, count)]


def _frames_of_images(items: list, policy: MediaPolicy, limits: MediaLimits) -> VideoClip:
    from swiftops.media.image import load_image

    images = [load_image(item, policy) for item in items]
    size = images[0].size
    frames = np.stack([np.asarray(image.resize(size) if image.size != size else image) for image in images])
    # Frames given one by one are taken as already sampled at the configured rate.
    return VideoClip(frames, limits.fps, limits.fps, len(images), list(range(len(images))))


def _rgb(frame, max_pixels: int) -> np.ndarray:
    """[H, W, 3] uint8, shrunk (aspect kept) when the frame has more than `max_pixels` pixels."""
    if frame.width * frame.height > max_pixels:
        scale = math.sqrt(max_pixels / (frame.width * frame.height))
        return frame.to_ndarray(
            format="rgb24",
            width=max(2, int(frame.width * scale) // 2 * 2),
            height=max(2, int(frame.height * scale) // 2 * 2),
        )
    return frame.to_ndarray(format="rgb24")


def _kept_pixels(width: int, height: int, cap: int) -> int:
    return min(width * height, cap) if width and height else cap


def _decode(source, limits: MediaLimits) -> VideoClip:
    import av

    container = open_container(source, "video")
    budget = current_budget()
    with container:
        if not container.streams.video:
            raise BadRequestError("the video has no video stream", param="videos")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        source_fps = float(stream.average_rate or stream.guessed_rate or 0) or 1.0
        total = stream.frames
        if not total and stream.duration is not None and stream.time_base is not None:
            total = int(round(float(stream.duration * stream.time_base) * source_fps))
        if not total and container.duration:
            total = int(round(container.duration / av.time_base * source_fps))
        wanted = sample_indices(total, sample_count(total, source_fps, limits)) if total else None
        cap = DECODE_PIXEL_MARGIN * (limits.video_max_pixels or DEFAULT_VIDEO_MAX_PIXELS)
        kept: dict[int, np.ndarray] = {}
        all_frames: list[np.ndarray] = []
        last_needed = max(wanted) if wanted else None
        width, height = stream.codec_context.width, stream.codec_context.height
        if budget is not None and wanted:  # from the container's metadata, before decoding a frame
            budget.charge_video(len(wanted), width, height, _kept_pixels(width, height, cap))
        try:
            for index, frame in enumerate(container.decode(stream)):
                if wanted is None:  # length unknown: every frame is kept, so each is charged as it comes
                    if budget is not None:
                        budget.charge_video(1, frame.width, frame.height, _kept_pixels(frame.width, frame.height, cap))
                    if len(all_frames) >= MAX_FRAMES_OF_UNKNOWN_LENGTH:
                        raise BadRequestError(
                            f"the video does not say how long it is and has more than "
                            f"{MAX_FRAMES_OF_UNKNOWN_LENGTH} frames; remux it (ffmpeg -i in -c copy "
                            f"out.mp4)",
                            param="videos",
                        )
                    all_frames.append(_rgb(frame, cap))
                elif index in wanted:
                    kept[index] = _rgb(frame, cap)
                if last_needed is not None and index >= last_needed:
                    break
        except av.error.FFmpegError as exc:
            if not kept and not all_frames:
                raise BadRequestError(f"cannot decode the video: {exc}", param="videos") from None
    if wanted is None:  # the container did not say how long it is: we decoded it all
        total = len(all_frames)
        wanted = sample_indices(total, sample_count(total, source_fps, limits))
        kept = {i: all_frames[i] for i in wanted}
    if not kept:
        raise BadRequestError("the video has no frames", param="videos")
    # A container that over-states its frame count: a wanted frame past the end repeats the last one decoded.
    last = max(kept)
    frames = np.stack([kept.get(i, kept[last]) for i in wanted])
    sampled_fps = len(wanted) / max(total, 1e-6) * source_fps
    return VideoClip(frames, sampled_fps, source_fps, total, wanted)


def load_video(item: Any, policy: MediaPolicy | None = None, limits: MediaLimits | None = None) -> VideoClip:
    """Decode and sample a video: a path, URL, base64 / data: URI, bytes, or a list of frames (images)."""
    policy = policy or MediaPolicy()
    limits = limits or MediaLimits.resolve()
    if isinstance(item, VideoClip):
        return item
    if isinstance(item, (list, tuple)):
        if not item:
            raise BadRequestError("a video given as a list of frames needs at least one frame", param="videos")
        return _frames_of_images(list(item), policy, limits)
    if isinstance(item, np.ndarray) and item.ndim == 4:
        return VideoClip(item, limits.fps, limits.fps, item.shape[0], list(range(item.shape[0])))
    return _decode(read_media(item, policy, "video"), limits)
