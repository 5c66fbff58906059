"""The session's output for one Converse stream: its events and audio as
ConverseResponse messages on a bounded queue, which the RPC's own task writes
out in order (grpc allows one write in flight)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from parley.v1 import gateway_pb2
from services.gateway.core import events as ev
from services.gateway.core.sink import ClientSink
from services.gateway.protocols.grpc.serializer import to_audio, to_response

log = logging.getLogger("parley.gateway.grpc")

# Audio is paced by the session, so a full queue (about ten seconds of
# output) means the client has stopped reading.
QUEUE_ITEMS = 256
STALL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Finish:
    """Ends the stream once everything queued before it is written."""

    code: grpc.StatusCode | None = None  # None: complete with OK
    details: str = ""
    error_code: str = ""  # the Parley code, in trailing metadata
    # The stream broke without `end`: the session waits for a resume
    # instead of closing.
    lost: bool = False


class GrpcSink(ClientSink):
    def __init__(self, on_stall: Callable[[], None]) -> None:
        self._queue: asyncio.Queue[gateway_pb2.ConverseResponse | Finish] = asyncio.Queue(
            QUEUE_ITEMS
        )
        self._on_stall = on_stall
        self.finished = False
        self.stalled = False

    async def send_event(self, event: ev.SessionEvent) -> None:
        msg = to_response(event)
        if msg is not None:
            await self._put(msg)

    async def send_audio(self, frame: ev.AudioOut) -> None:
        await self._put(to_audio(frame))

    async def close(self, reason: str) -> None:
        log.info("stream ends: %s", reason)
        await self.finish(Finish())

    async def finish(self, finish: Finish) -> None:
        """The last item of the stream; anything sent after it is dropped."""
        if self.finished:
            return
        await self._put(finish)
        self.finished = True

    def stop(self) -> None:
        """The stream is gone: drop whatever the session still sends."""
        self.finished = True

    async def get(self) -> gateway_pb2.ConverseResponse | Finish:
        return await self._queue.get()

    async def _put(self, item: gateway_pb2.ConverseResponse | Finish) -> None:
        if self.finished:
            return
        try:
            async with asyncio.timeout(STALL_TIMEOUT_S):
                await self._queue.put(item)
        except TimeoutError:
            self.finished = self.stalled = True
            self._on_stall()
