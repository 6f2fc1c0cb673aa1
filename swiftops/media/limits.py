"""Pixel and frame limits: `MediaSettings` fields first, then ms-swift's environment variables, then defaults.

ms-swift users bound memory with `MAX_PIXELS=1003520 VIDEO_MAX_PIXELS=50176 FPS_MAX_FRAMES=12 swift infer ...`;
the same variables work here. Pixel limits left unset keep the processor's own defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from swiftops.protocol.errors import ConfigError
from swiftops.protocol.settings import MediaSettings

# qwen-vl-utils' defaults for frame sampling (what ms-swift uses for Qwen2-VL / Qwen2.5-VL).
DEFAULT_FPS = 2.0
DEFAULT_FPS_MAX_FRAMES = 768
DEFAULT_FPS_MIN_FRAMES = 4

# field -> (environment variable, type)
_ENV = {
    "max_pixels": ("MAX_PIXELS", int),
    "min_pixels": ("MIN_PIXELS", int),
    "video_max_pixels": ("VIDEO_MAX_PIXELS", int),
    "video_min_pixels": ("VIDEO_MIN_PIXELS", int),
    "fps": ("FPS", float),
    "fps_max_frames": ("FPS_MAX_FRAMES", int),
    "fps_min_frames": ("FPS_MIN_FRAMES", int),
}


@dataclass(frozen=True)
class MediaLimits:
    max_pixels: int | None = None  # None: the processor's default
    min_pixels: int | None = None
    video_max_pixels: int | None = None
    video_min_pixels: int | None = None
    fps: float = DEFAULT_FPS
    fps_max_frames: int = DEFAULT_FPS_MAX_FRAMES
    fps_min_frames: int = DEFAULT_FPS_MIN_FRAMES

    @classmethod
    def resolve(cls, settings: MediaSettings | None = None, environ: Mapping[str, str] | None = None) -> MediaLimits:
        """Limits from `settings` where set, else from MAX_PIXELS & co. in `environ` (default: os.environ)."""
        environ = os.environ if environ is None else environ
        values = {}
        for field, (env_name, kind) in _ENV.items():
            value = getattr(settings, field, None) if settings is not None else None
            if value is None and environ.get(env_name, "").strip():
                try:
                    value = kind(environ[env_name])
                except ValueError:
                    raise ConfigError(
                        f"{env_name}={environ[env_name]!r} is not a number; set it to a {kind.__name__} or unset it"
                    ) from None
                if value <= 0:
                    raise ConfigError(f"{env_name} must be positive, got {environ[env_name]}")
            if value is not None:
                values[field] = value
        limits = cls(**values)
        if limits.fps_min_frames > limits.fps_max_frames:
            raise ConfigError(
                f"FPS_MIN_FRAMES ({limits.fps_min_frames}) is above FPS_MAX_FRAMES "
                f"({limits.fps_max_frames}); lower one of them"
            )
        return limits
