"""Mono PCM16 WAV files in and out, at the rate the protocol wants."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr


def read_wav(path: str | Path, rate: int = 16000) -> bytes:
    """PCM16 mono at `rate`, whatever the file's rate and channel count."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels, native = w.getnchannels(), w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype("<i2")
    if native != rate:
        samples = soxr.resample(samples, native, rate).astype("<i2")
    return samples.tobytes()


def write_wav(path: str | Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


def last_voiced_ms(pcm: bytes, rate: int = 16000, threshold_db: float = -45.0) -> float:
    """Where the speech in a clip really ends: the end of its last 10 ms window
    louder than threshold_db (dBFS)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    window = rate // 100
    count = len(samples) // window
    if count == 0:
        return 0.0
    frames = samples[: count * window].reshape(count, window)
    rms_db = 20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9)
    voiced = np.nonzero(rms_db > threshold_db)[0]
    return float((voiced[-1] + 1) * 10) if len(voiced) else 0.0
