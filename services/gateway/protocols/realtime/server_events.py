"""Realtime server events out to one connection, in the client's dialect, and
the conversation items they describe, in order (each item names the one
before it). The session config decides their shape (formats, text-only)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from services.gateway.protocols.realtime.audio import PCM16, AudioCodec
from services.gateway.protocols.realtime.config import RealtimeConfig
from services.gateway.protocols.realtime.events import Dialect, Wire


class ServerEvents:
    def __init__(self, ws: ServerConnection, dialect: Dialect) -> None:
        self.ws = ws
        self.dialect = dialect
        self.config = RealtimeConfig()
        self.out_codec = AudioCodec(PCM16, encode=True)
        # Parley's events, the client's events and the client's function calls
        # run in different tasks, and each changes the items: one at a time.
        self.lock = asyncio.Lock()
        self.items: dict[str, Wire] = {}
        self.closed = False

    @property
    def beta(self) -> bool:
        return self.dialect.beta

    async def emit(self, event: Wire) -> None:
        try:
            await self.ws.send(json.dumps(event))
        except ConnectionClosed:
            self.closed = True

    async def event(self, kind: str, **fields: Any) -> None:
        await self.emit(self.dialect.event(kind, **fields))

    async def error(
        self,
        code: str,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        await self.emit(self.dialect.error(code, message, param, event_id, kind))

    async def close(self, reason: str) -> None:
        self.closed = True
        await self.ws.close(1000, reason)

    # --- items ------------------------------------------------------------------
    def last_item_id(self) -> str | None:
        return next(reversed(self.items), None)

    def previous(self, item_id: str) -> str | None:
        ids = list(self.items)
        at = ids.index(item_id) if item_id in ids else 0
        return ids[at - 1] if at > 0 else None

    async def add_item(self, item: Wire, done: bool = True) -> None:
        """conversation.item.created (beta) / .added and, when done, .done (GA)."""
        previous = self.last_item_id()
        self.items[item["id"]] = item
        await self.emit(self.dialect.item_added(item, previous))
        if done and not self.beta:
            await self.event("conversation.item.done", previous_item_id=previous, item=item)

    async def item_done(self, item: Wire) -> None:
        """The item is complete: GA says so (beta has no such event)."""
        if not self.beta:
            previous = self.previous(item["id"])
            await self.event("conversation.item.done", previous_item_id=previous, item=item)
