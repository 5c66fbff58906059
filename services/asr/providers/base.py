"""The interface every speech recognizer implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from parley.errors import ProviderError

__all__ = ["ProviderError", "Transcriber", "TranscriptionResult"]


@dataclass
class TranscriptionResult:
    text: str
    language: str | None
    audio_ms: float
    processing_ms: float


class Transcriber(Protocol):
    name: str

    async def load(self) -> None: ...

    async def transcribe(
        self, pcm16: bytes, sample_rate: int, language: str | None = None
    ) -> TranscriptionResult: ...

    async def aclose(self) -> None: ...
