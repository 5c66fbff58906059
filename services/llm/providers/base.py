"""The interface every language model backend implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from parley.errors import ProviderError

__all__ = ["ChatModel", "Message", "ProviderError", "ToolCall"]

# OpenAI chat message shape: role, content, and tool_calls / tool_call_id.
Message = dict[str, Any]


@dataclass
class ToolCall:
    """A complete call the model asked for, assembled from streamed deltas."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


class ChatModel(Protocol):
    name: str
    supports_tools: bool

    async def load(self) -> None: ...

    def stream(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str | ToolCall]:
        """Text deltas as generated, then any tool calls; closing the iterator
        stops generation."""
        ...

    async def aclose(self) -> None: ...
