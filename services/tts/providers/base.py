"""The interface every speech synthesizer implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from parley.errors import ProviderError

__all__ = ["ProviderError", "Synthesizer"]


class Synthesizer(Protocol):
    name: str
    # Native output rate of the PCM16 mono audio, known after load().
    sample_rate: int

    async def load(self) -> None: ...

    def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[bytes]:
        """PCM16 chunks as they are produced; closing the iterator stops the work."""
        ...

    async def aclose(self) -> None: ...
