"""Opus for the device protocols, through PyAV's libopus (bundled in its wheels)."""

from __future__ import annotations

import av
import av.error
import numpy as np

# Opus carries these rates natively; anything else is resampled before encoding.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_FRAME_MS = (10, 20, 40, 60)
# libopus decodes at 48 kHz whatever the encoder's rate was.
DECODED_RATE = 48000


class OpusError(ValueError):
    """A packet that does not decode."""


class OpusEncoder:
    """PCM16 mono in, one Opus packet per frame_ms out. Partial frames wait for
    more audio; flush() pads the last one with silence."""

    def __init__(self, sample_rate: int, frame_ms: int = 60, bitrate: int = 32000) -> None:
        if sample_rate not in OPUS_RATES:
            raise ValueError(f"Opus does not run at {sample_rate} Hz; use one of {OPUS_RATES}")
        if frame_ms not in OPUS_FRAME_MS:
            raise ValueError(f"Opus frames are {OPUS_FRAME_MS} ms, not {frame_ms}")
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = sample_rate
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.options = {"frame_duration": str(frame_ms), "application": "voip"}
        ctx.open()
        self._ctx = ctx
        self._pending = np.zeros(0, dtype="<i2")
        self._pts = 0

    def encode(self, pcm: bytes) -> list[bytes]:
        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
        self._pending = np.concatenate([self._pending, samples])
        packets: list[bytes] = []
        n = self.frame_samples
        while len(self._pending) >= n:
            frame, self._pending = self._pending[:n], self._pending[n:]
            packets += self._encode_frame(frame)
        return packets

    def flush(self) -> list[bytes]:
        """The rest, padded to a whole frame (devices play whole frames only)."""
        if not len(self._pending):
            return []
        frame = np.zeros(self.frame_samples, dtype="<i2")
        frame[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype="<i2")
        return self._encode_frame(frame)

    def _encode_frame(self, samples: np.ndarray) -> list[bytes]:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += len(samples)
        return [bytes(packet) for packet in self._ctx.encode(frame)]


class OpusDecoder:
    """One Opus packet in, PCM16 mono at DECODED_RATE out."""

    def __init__(self) -> None:
        ctx = av.CodecContext.create("libopus", "r")
        ctx.sample_rate = DECODED_RATE
        ctx.layout = "mono"
        ctx.format = "s16"
        self._ctx = ctx

    def decode(self, packet: bytes) -> bytes:
        if not packet:
            raise OpusError("empty Opus packet")
        try:
            frames = self._ctx.decode(av.Packet(packet))
        except (av.error.FFmpegError, ValueError) as exc:
            raise OpusError(f"not an Opus packet: {exc}") from None
        out = []
        for frame in frames:
            data = frame.to_ndarray()
            if data.dtype != np.int16:  # a float decoder on some builds
                data = np.clip(data * 32767.0, -32768, 32767).astype("<i2")
            out.append(data.reshape(-1).astype("<i2").tobytes())
        return b"".join(out)
