"""Audio decoding to mono float32 at the processor's sampling rate."""
import base64
import io
import wave

import numpy as np
import pytest

from swiftops.media import MediaPolicy, load_audio


def wav_bytes(seconds=1.0, rate=44100, freq=440.0, channels=2) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (np.sin(2 * np.pi * freq * t) * 16000).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(np.repeat(samples[:, None], channels, axis=1).tobytes())
    return buffer.getvalue()


def test_stereo_44k_becomes_mono_16k_keeping_the_pitch():
    audio = load_audio(wav_bytes(), MediaPolicy(), sampling_rate=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - 16000) <= 32
    # A 440 Hz sine crosses zero 880 times a second.
    crossings = np.count_nonzero(np.diff(np.signbit(audio[100:-100])))
    assert crossings == pytest.approx(880 * (audio.size - 200) / 16000, rel=0.02)
    assert 0.4 < np.abs(audio).max() <= 1.0


def test_openai_input_audio_data_uri_and_rate():
    encoded = base64.b64encode(wav_bytes(seconds=0.5, rate=8000, channels=1)).decode()
    audio = load_audio(f"data:audio/wav;base64,{encoded}", MediaPolicy(), sampling_rate=24000)
    assert abs(audio.size - 12000) <= 48
