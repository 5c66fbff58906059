"""A test client for the Parley WebSocket protocol: streams audio in real
time like a device and records every event and audio byte it gets back."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

FRAME_MS = 20


class ParleyClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.audio = bytearray()
        self.first_audio_at: float | None = None
        self.frames: list[tuple[float, int]] = []  # (arrival, bytes) of each audio frame
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self.session: dict[str, Any] = {}

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> ParleyClient:
        ws = await connect(url, max_size=None, **kwargs)
        client = cls(ws)
        client.session = await client.wait_for("session_started", timeout=30)
        return client

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                async with self._changed:
                    if isinstance(message, bytes):
                        if self.first_audio_at is None:
                            self.first_audio_at = time.monotonic()
                        self.frames.append((time.monotonic(), len(message)))
                        self.audio.extend(message)
                    else:
                        event = json.loads(message)
                        event["_at"] = time.monotonic()
                        self.events.append(event)
                    self._changed.notify_all()
        except Exception:
            pass
        finally:
            async with self._changed:
                self._changed.notify_all()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    async def wait_for(
        self, kind: str, timeout: float = 60, after: int = 0, **match: Any
    ) -> dict[str, Any]:
        """The first event of that type (from index `after`) whose fields match."""

        def find() -> dict[str, Any] | None:
            for event in self.events[after:]:
                if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                    return event
            return None

        async with asyncio.timeout(timeout):
            async with self._changed:
                while (found := find()) is None:
                    if self._reader.done():
                        raise AssertionError(f"connection closed before {kind}: {self.events}")
                    await self._changed.wait()
        return found

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def stream(self, pcm: bytes, rate: int = 16000, frame_ms: int = FRAME_MS) -> float:
        """Send audio paced in real time; returns the monotonic time it ended."""
        step = int(rate * 2 * frame_ms / 1000)
        start = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), step)):
            await self.ws.send(pcm[i : i + step])
            delay = start + (n + 1) * frame_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return time.monotonic()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def silence(ms: int, rate: int = 16000) -> bytes:
    return bytes(int(rate * ms / 1000) * 2)
