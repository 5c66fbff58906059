"""Real test speech, synthesized with the Piper voice en_US-joe-medium."""

from __future__ import annotations

from parley.cli.speech import synthesize_speech
from parley.cli.wavio import read_wav, write_wav

__all__ = ["read_wav", "synthesize_speech", "with_silence", "write_wav"]


def with_silence(pcm: bytes, sample_rate: int, lead_ms: int, tail_ms: int) -> bytes:
    def zeros(ms: int) -> bytes:
        return bytes(int(sample_rate * ms / 1000) * 2)

    return zeros(lead_ms) + pcm + zeros(tail_ms)
