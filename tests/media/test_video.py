"""Video decoding with PyAV and qwen-vl-utils' frame sampling (fps, min/max frames)."""
import base64

import numpy as np
import pytest
from PIL import Image

from swiftops.media import MediaLimits, MediaPolicy, load_video
from swiftops.media.video import sample_count, sample_indices
from swiftops.protocol import BadRequestError


def test_decodes_at_the_sampled_fps(sample_video_bytes):
    clip = load_video(sample_video_bytes, MediaPolicy(), MediaLimits(fps=2.0))
    # 3 s at 2 fps: 6 frames spread evenly over the 30 source frames.
    assert clip.frames.shape == (6, 64, 96, 3) and clip.frames.dtype == np.uint8
    assert clip.indices == [0, 6, 12, 17, 23, 29]
    assert clip.total_frames == 30 and clip.source_fps == pytest.approx(10.0)
    assert clip.sampled_fps == pytest.approx(2.0)
    # Frame i was filled with grey 8*i: the decoded frames are the sampled ones (within codec error).
    assert np.abs(clip.frames[:, 32, 48, 0].astype(int) - [8 * i for i in clip.indices]).max() <= 6


def test_fps_max_frames_caps_the_count(sample_video_bytes):
    clip = load_video(sample_video_bytes, MediaPolicy(), MediaLimits(fps=10.0, fps_max_frames=4))
    assert clip.num_frames == 4 and clip.indices == [0, 10, 19, 29]
    assert clip.sampled_fps == pytest.approx(4 / 3)


def test_fps_min_frames_raises_the_count(sample_video_bytes):
    clip = load_video(sample_video_bytes, MediaPolicy(), MediaLimits(fps=0.1, fps_min_frames=8))
    assert clip.num_frames == 8


@pytest.mark.parametrize("total,fps,limits,expected", [
    (30, 10.0, MediaLimits(fps=2.0), 6),
    (31, 10.0, MediaLimits(fps=2.0), 6),  # 6.2 -> even count below
    (300, 30.0, MediaLimits(fps=2.0, fps_max_frames=12), 12),
    (5, 30.0, MediaLimits(), 4),  # min 4 frames, even, within the 5 there are
    (1, 30.0, MediaLimits(), 1),
])
def test_sample_count_follows_qwen_vl_utils(total, fps, limits, expected):
    assert sample_count(total, fps, limits) == expected
    assert len(sample_indices(total, expected)) == expected


def test_every_input_form_decodes_the_same(sample_video_bytes, tmp_path, media_server):
    path = tmp_path / "clip.mp4"
    path.write_bytes(sample_video_bytes)
    media_server.routes["/clip.mp4"] = (200, {"Content-Type": "video/mp4"}, sample_video_bytes)
    encoded = base64.b64encode(sample_video_bytes).decode()
    forms = [str(path), encoded, f"data:video/mp4;base64,{encoded}", media_server.url("/clip.mp4")]
    clips = [load_video(form, MediaPolicy(), MediaLimits()) for form in forms]
    assert all(np.array_equal(clips[0].frames, clip.frames) for clip in clips[1:])


def test_a_list_of_images_is_a_video():
    frames = [Image.new("RGB", (32, 24), (i * 40, 0, 0)) for i in range(4)]
    clip = load_video(frames, MediaPolicy(), MediaLimits(fps=2.0))
    assert clip.frames.shape == (4, 24, 32, 3)
    assert clip.frames[3, 0, 0, 0] == 120 and clip.sampled_fps == 2.0


def test_broken_video_is_a_400():
    with pytest.raises(BadRequestError, match="video"):
        load_video(b"\x00\x00\x00 not an mp4 at all" * 10, MediaPolicy(), MediaLimits())


def test_large_frames_are_shrunk_while_decoding(sample_video_bytes):
    # 96x64 frames = 6144 pixels; a 2x28x28 frame bound with the 4x decode margin keeps at most 6272 -> unchanged,
    # a 28x28 bound keeps at most 3136 -> shrunk, aspect kept.
    assert load_video(sample_video_bytes, MediaPolicy(), MediaLimits(video_max_pixels=2 * 784)).frames.shape[1:3] == (64, 96)
    small = load_video(sample_video_bytes, MediaPolicy(), MediaLimits(video_max_pixels=784)).frames
    assert small.shape[1] * small.shape[2] <= 4 * 784 and small.shape[2] / small.shape[1] == pytest.approx(1.5, rel=0.1)
