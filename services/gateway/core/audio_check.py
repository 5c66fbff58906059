"""Cheap checks that a binary frame is raw PCM16 and not something else."""

from __future__ import annotations

from services.gateway.core.errors import ClientError

# Containers and encodings people send by mistake instead of raw PCM.
_MAGIC = {
    b"RIFF": "a WAV file",
    b"OggS": "an Ogg stream",
    b"ID3": "an MP3 file",
    b"fLaC": "a FLAC file",
    b"\x1aE\xdf\xa3": "a WebM stream",
}


def check_pcm16(frame: bytes, max_bytes: int) -> None:
    if len(frame) > max_bytes:
        raise ClientError(
            "frame_too_large",
            f"audio frame of {len(frame)} bytes exceeds the limit of {max_bytes} bytes; "
            "send 20-200 ms per frame",
        )
    if not frame:
        raise ClientError("bad_audio", "empty audio frame")
    if len(frame) % 2:
        raise ClientError(
            "bad_audio", f"audio frame of {len(frame)} bytes is not PCM16 (odd length)"
        )
    for magic, what in _MAGIC.items():
        if frame.startswith(magic):
            raise ClientError(
                "bad_audio", f"binary frame looks like {what}; send raw PCM16 mono frames"
            )
    if frame[:1] in (b"{", b"[") and frame.rstrip()[-1:] in (b"}", b"]"):
        raise ClientError("bad_audio", "binary frame holds JSON; send JSON as a text frame")
