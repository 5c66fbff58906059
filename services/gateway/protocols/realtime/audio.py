"""Audio formats of the OpenAI Realtime API: PCM16 at 24 kHz and G.711 µ-law
and A-law at 8 kHz, named the beta way ("pcm16", "g711_ulaw", "g711_alaw") or
the GA way ({"type": "audio/pcm", "rate": 24000}, "audio/pcmu", "audio/pcma").

G.711 goes through FFmpeg's pcm_mulaw / pcm_alaw codecs (PyAV); the session
resamples, since its input and output rates follow the format's rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from services.gateway.protocols.realtime.events import RealtimeClientError

PCM_RATE = 24000
G711_RATE = 8000


@dataclass(frozen=True)
class AudioFormat:
    beta_name: str  # "pcm16" | "g711_ulaw" | "g711_alaw"
    mime: str  # "audio/pcm" | "audio/pcmu" | "audio/pcma"
    rate: int
    codec: str | None  # PyAV codec name; None for raw PCM16

    @property
    def bytes_per_ms(self) -> float:
        sample_bytes = 2 if self.codec is None else 1
        return self.rate * sample_bytes / 1000

    def describe(self, beta: bool) -> Any:
        if beta:
            return self.beta_name
        if self.codec is None:
            return {"type": self.mime, "rate": self.rate}
        return {"type": self.mime}


PCM16 = AudioFormat("pcm16", "audio/pcm", PCM_RATE, None)
ULAW = AudioFormat("g711_ulaw", "audio/pcmu", G711_RATE, "pcm_mulaw")
ALAW = AudioFormat("g711_alaw", "audio/pcma", G711_RATE, "pcm_alaw")
_BY_BETA = {f.beta_name: f for f in (PCM16, ULAW, ALAW)}
_BY_MIME = {f.mime: f for f in (PCM16, ULAW, ALAW)}


def parse_format(value: Any, param: str) -> AudioFormat:
    """A format in either shape; the error names the parameter."""
    if isinstance(value, str):
        fmt = _BY_BETA.get(value) or _BY_MIME.get(value)
        if fmt is not None:
            return fmt
    elif isinstance(value, dict):
        fmt = _BY_MIME.get(value.get("type", ""))
        if fmt is not None:
            rate = value.get("rate")
            if fmt is PCM16 and rate not in (None, PCM_RATE):
                raise RealtimeClientError(
                    "invalid_value",
                    f"{param}.rate: only {PCM_RATE} Hz PCM is supported",
                    f"{param}.rate",
                )
            return fmt
    raise RealtimeClientError(
        "invalid_value",
        f"{param}: unsupported audio format {value!r}; use pcm16, g711_ulaw, g711_alaw "
        "or {type: audio/pcm, rate: 24000}, audio/pcmu, audio/pcma",
        param,
    )


# Containers people append by mistake instead of raw samples.
_CONTAINERS = {
    b"RIFF": "a WAV file",
    b"OggS": "an Ogg stream",
    b"ID3": "an MP3 file",
    b"fLaC": "a FLAC file",
    b"\x1aE\xdf\xa3": "a WebM stream",
}


def check_raw(data: bytes, fmt: AudioFormat) -> None:
    for magic, what in _CONTAINERS.items():
        if data.startswith(magic):
            raise RealtimeClientError(
                "invalid_audio",
                f"the audio looks like {what}; append raw {fmt.beta_name} samples",
            )
    if fmt.codec is None and len(data) % 2:
        raise RealtimeClientError(
            "invalid_audio", f"{len(data)} bytes of pcm16 audio: an odd length is not PCM16"
        )


class G711Codec:
    """One direction of G.711 (FFmpeg's codec through PyAV) for one connection."""

    def __init__(self, fmt: AudioFormat, encode: bool) -> None:
        assert fmt.codec is not None
        ctx: Any = av.CodecContext.create(fmt.codec, "w" if encode else "r")
        ctx.sample_rate = fmt.rate
        ctx.layout = "mono"
        ctx.format = "s16"
        if encode:
            ctx.open()
        self._ctx = ctx
        self.rate = fmt.rate

    def encode(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.rate
        return b"".join(bytes(packet) for packet in self._ctx.encode(frame))

    def decode(self, data: bytes) -> bytes:
        frames = self._ctx.decode(av.Packet(data))
        return b"".join(f.to_ndarray().astype("<i2").tobytes() for f in frames)


class AudioCodec:
    """Client audio <-> the PCM16 the session takes and gives, at fmt.rate."""

    def __init__(self, fmt: AudioFormat, encode: bool) -> None:
        self.format = fmt
        self._g711 = G711Codec(fmt, encode) if fmt.codec is not None else None

    def to_pcm(self, data: bytes) -> bytes:
        check_raw(data, self.format)
        if self._g711 is None:
            return data
        return self._g711.decode(data) if data else b""

    def from_pcm(self, pcm: bytes) -> bytes:
        if self._g711 is None or not pcm:
            return pcm
        return self._g711.encode(pcm)
