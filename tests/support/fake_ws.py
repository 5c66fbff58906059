"""A stand-in for a server-side WebSocket connection that keeps what the
gateway would have sent, for the protocol serializer tests."""

from __future__ import annotations

import json
from typing import Any


class FakeWebSocket:
    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        # The peer, as a ServerConnection names it (EchoKit's takeover rule).
        self.remote_address = ("127.0.0.1", 40000)

    async def send(self, message: str | bytes) -> None:
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def json(self) -> list[dict[str, Any]]:
        """The text frames, parsed."""
        return [json.loads(m) for m in self.sent if isinstance(m, str)]

    def binary(self) -> list[bytes]:
        return [m for m in self.sent if isinstance(m, bytes)]

    def take(self) -> list[str | bytes]:
        """Everything sent so far, forgotten."""
        sent, self.sent = self.sent, []
        return sent
