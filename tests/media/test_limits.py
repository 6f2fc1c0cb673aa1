"""MAX_PIXELS & co.: settings first, then ms-swift's environment variables, then defaults."""
import pytest

from swiftops.media import MediaLimits
from swiftops.media.limits import DEFAULT_FPS, DEFAULT_FPS_MAX_FRAMES
from swiftops.protocol import ConfigError
from swiftops.protocol.settings import MediaSettings


def test_defaults_leave_pixels_to_the_processor():
    limits = MediaLimits.resolve(environ={})
    assert limits.max_pixels is None and limits.fps == DEFAULT_FPS and limits.fps_max_frames == DEFAULT_FPS_MAX_FRAMES


def test_environment_variables_are_read():
    env = {"MAX_PIXELS": "1003520", "VIDEO_MAX_PIXELS": "50176", "FPS_MAX_FRAMES": "12", "FPS": "1.5",
           "MIN_PIXELS": "3136"}
    limits = MediaLimits.resolve(environ=env)
    assert (limits.max_pixels, limits.video_max_pixels, limits.fps_max_frames, limits.fps, limits.min_pixels) == \
        (1003520, 50176, 12, 1.5, 3136)


def test_settings_win_over_the_environment():
    limits = MediaLimits.resolve(MediaSettings(max_pixels=1000, fps_max_frames=4), environ={"MAX_PIXELS": "9"})
    assert limits.max_pixels == 1000 and limits.fps_max_frames == 4


@pytest.mark.parametrize("env", [{"MAX_PIXELS": "lots"}, {"FPS": "-1"}, {"FPS_MIN_FRAMES": "10", "FPS_MAX_FRAMES": "4"}])
def test_bad_values_are_config_errors(env):
    with pytest.raises(ConfigError):
        MediaLimits.resolve(environ=env)
