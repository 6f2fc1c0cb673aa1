"""Loading images, video and audio from a local path, an http(s) URL, base64 / `data:` URIs or PIL images,
within limits (pixels, frames, bytes, time) and a policy for what a client may point the server at."""

from swiftops.media.audio import load_audio
from swiftops.media.image import load_image
from swiftops.media.limits import MediaLimits
from swiftops.media.policy import MediaPolicy
from swiftops.media.source import read_media
from swiftops.media.video import VideoClip, load_video

__all__ = ["MediaLimits", "MediaPolicy", "VideoClip", "load_audio", "load_image", "load_video", "read_media"]
