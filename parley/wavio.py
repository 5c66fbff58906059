"""Mono PCM16 WAV files in and out, at the rate the protocol wants."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import soxr


class WavError(ValueError):
    """A file `parley` cannot use as speech; the message names the file."""


def read_wav(path: str | Path, rate: int = 16000) -> bytes:
    """PCM16 LE mono at `rate`, whatever the file's rate and channel count."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, native = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise WavError(f"{path}: {8 * width}-bit samples; only 16-bit PCM WAV files are supported")
    samples = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        # Mean, not the left channel: a mic pair may carry the voice on either side.
        frames = samples[: len(samples) // channels * channels].reshape(-1, channels)
        samples = np.round(frames.astype(np.float32).mean(axis=1)).astype("<i2")
    if native != rate and len(samples):
        samples = np.asarray(soxr.resample(samples, native, rate, quality="HQ"), dtype="<i2")
    return samples.astype("<i2", copy=False).tobytes()


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """PCM16 LE mono as a WAV file in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buffer.getvalue()


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    """Write PCM16 LE mono as a WAV file."""
    Path(path).write_bytes(wav_bytes(pcm, rate))


def last_voiced_ms(pcm: bytes, rate: int = 16000, threshold_db: float = -45.0) -> float:
    """Where the speech in a clip really ends: the end of its last 10 ms window
    louder than threshold_db (dBFS); 0 for a clip with no speech at all.

    -45 dBFS sits well under the quietest voiced sounds of synthesized speech
    and well over dither or a quiet room, so trailing breath and fade-outs of
    a few ms do not move the mark by more than a window."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    window = rate // 100
    count = len(samples) // window
    if count == 0:
        return 0.0
    frames = samples[: count * window].reshape(count, window)
    rms_db = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9)
    voiced = np.nonzero(rms_db > threshold_db)[0]
    return float((voiced[-1] + 1) * 10) if len(voiced) else 0.0


def silence(ms: float, rate: int = 16000) -> bytes:
    """PCM16 digital silence of that length."""
    return bytes(int(rate * ms / 1000) * 2)
