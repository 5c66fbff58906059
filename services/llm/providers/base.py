"""The interface every language model backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from parley.errors import ProviderError

__all__ = ["ChatModel", "ProviderError"]


class ChatModel(Protocol):
    name: str

    async def load(self) -> None: ...

    def stream(
        self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        """Text deltas as generated; closing the iterator stops generation."""
        ...

    async def aclose(self) -> None: ...
