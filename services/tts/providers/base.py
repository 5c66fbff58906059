"""The interface every speech synthesizer implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from parley.errors import ProviderError

__all__ = ["ProviderError", "Synthesizer"]


class Synthesizer(Protocol):
    name: str
    # Native output rate of the PCM16 mono audio, known after load().
    sample_rate: int

    async def load(self) -> None: ...

    # An async generator, not just an iterator: callers aclose() it on barge-in
    # and that must stop the synthesis behind it.
    def synthesize(self, text: str, voice: str | None = None) -> AsyncGenerator[bytes, None]:
        """PCM16 LE mono chunks at sample_rate as they are produced."""
        ...

    async def aclose(self) -> None: ...
