"""Real test speech, synthesized with the Piper voice en_US-joe-medium, and the
WAV and padding helpers tests use around it."""

from __future__ import annotations

import wave
from pathlib import Path

# One synthesis shared with `parley say` and the benchmark, so tests hear
# exactly what the CLI sends; one WAV writer and one silence too.
from parley.speech import synthesize_speech
from parley.wavio import silence, write_wav

__all__ = ["read_wav", "silence", "synthesize_speech", "with_silence", "write_wav"]


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """(PCM16 LE mono, sample rate) of a mono 16-bit WAV file, unresampled."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(
                f"{path}: {w.getnchannels()} channel(s) of {8 * w.getsampwidth()}-bit samples;"
                " tests expect mono 16-bit PCM"
            )
        return w.readframes(w.getnframes()), w.getframerate()


def with_silence(pcm: bytes, sample_rate: int, lead_ms: int, tail_ms: int) -> bytes:
    """Pad with digital silence (exact zeros) before and after."""
    return silence(lead_ms, sample_rate) + pcm + silence(tail_ms, sample_rate)
