"""The interface every language model backend implements."""

from __future__ import annotations

from collections.abc import AsyncGenerator
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
    """A chat model that streams its answer.

    Failures raise ProviderError with code provider_unavailable (the model
    cannot be reached or loaded), timeout, or provider_error (the model
    answered with an error or with something malformed)."""

    name: str
    # Whether stream() may be offered tools (and may then yield ToolCall).
    supports_tools: bool

    async def load(self) -> None:
        """Get ready to answer: load weights, or nothing for a remote model."""
        ...

    def stream(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        temperature: float,
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncGenerator[str | ToolCall, None]:
        """Text deltas as they are generated, then any tool calls.

        Closing the generator early (aclose(), or cancelling the task that
        iterates it) stops the generation promptly: a barge-in must not leave
        a model writing an answer nobody will hear."""
        ...

    async def aclose(self) -> None: ...
