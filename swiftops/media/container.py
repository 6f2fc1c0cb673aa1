"""Opening video and audio with FFmpeg (PyAV) safely: only known container formats, named explicitly, and no
protocol but plain file input.

FFmpeg guesses a format from the bytes. A few hundred bytes of SDP text sent as `data:video/mp4;base64,...`
made it open RTP sockets on ports the client chose (a network listener started by a request body); HLS or
concat playlists can make it read other files or URLs. So the format is sniffed here from magic bytes
against an allow-list and passed to FFmpeg by name, and `protocol_whitelist` allows file input only.
"""

from __future__ import annotations

import io

from swiftops.protocol.errors import BadRequestError

# FFmpeg's demuxer name -> what users call it (for the error message).
VIDEO_CONTAINERS = {
    "mov": "MP4/MOV",
    "matroska": "MKV/WebM",
    "avi": "AVI",
    "mpegts": "MPEG-TS",
    "flv": "FLV",
    "mpeg": "MPEG-PS",
    "ogg": "Ogg",
    "gif": "GIF",
}
AUDIO_CONTAINERS = {
    "wav": "WAV",
    "mp3": "MP3",
    "flac": "FLAC",
    "ogg": "Ogg",
    "mov": "M4A/MP4",
    "matroska": "WebM/MKA",
    "aac": "AAC (ADTS)",
}
_SAFE_OPTIONS = {"protocol_whitelist": "file"}


def sniff_container(head: bytes) -> str | None:
    """FFmpeg's demuxer name for a file starting with `head` (64 bytes suffice), or None if not recognised."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # layer bits 00: ADTS AAC; else MPEG audio
    if head[:1] == b"\x47" and (len(head) < 189 or head[188:189] == b"\x47"):
        return "mpegts"
    return None


def open_container(source, kind: str):
    """An opened PyAV input container for a MediaSource (bytes or a local path); 400 for anything not allowed."""
    import av

    allowed = VIDEO_CONTAINERS if kind == "video" else AUDIO_CONTAINERS
    if source.path:
        with open(source.path, "rb") as f:
            head = f.read(256)
    else:
        head = bytes(source.data[:256])
    name = sniff_container(head)
    if name not in allowed:
        raise BadRequestError(
            f"the {kind} is not in a supported container format ({', '.join(allowed.values())}); "
            f"convert it to one of these",
            param=f"{kind}s",
            code="unsupported_media_format",
        )
    try:
        return av.open(
            source.path if source.path else io.BytesIO(source.data), format=name, options=dict(_SAFE_OPTIONS)
        )
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadRequestError(f"cannot open the {kind}: {exc}", param=f"{kind}s") from None
