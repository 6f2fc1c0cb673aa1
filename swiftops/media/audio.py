"""Audio from any media item, decoded with PyAV and resampled to the processor's rate, mono float32."""

from __future__ import annotations

from typing import Any

import numpy as np

from swiftops.media.container import open_container
from swiftops.media.policy import MediaPolicy
from swiftops.media.source import read_media
from swiftops.protocol.errors import BadRequestError

DEFAULT_SAMPLING_RATE = 16000  # Whisper-style feature extractors (Qwen2-Audio, Qwen2.5-Omni)
MAX_SECONDS = 30 * 60  # a cap on decoded length, whatever the byte size


def load_audio(item: Any, policy: MediaPolicy | None = None, sampling_rate: int = DEFAULT_SAMPLING_RATE) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sampling_rate`: [num_samples]."""
    import av

    if isinstance(item, np.ndarray):
        return item.astype(np.float32, copy=False)
    source = read_media(item, policy or MediaPolicy(), "audio")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with open_container(source, "audio") as container:
            if not container.streams.audio:
                raise BadRequestError("the audio has no audio stream", param="audios")
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].size
                if total > MAX_SECONDS * sampling_rate:
                    raise BadRequestError(f"the audio is longer than {MAX_SECONDS // 60} minutes", param="audios")
            for out in resampler.resample(None):  # flush the resampler's buffered tail
                chunks.append(out.to_ndarray().reshape(-1))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadRequestError(f"cannot decode the audio: {exc}", param="audios") from None
    if not chunks:
        raise BadRequestError("the audio has no samples", param="audios")
    return np.concatenate(chunks).astype(np.float32, copy=False)
