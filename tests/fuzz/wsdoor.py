"""One WebSocket per door, kept across cases: each case's frames go out on
it (what comes back is read by the client's own thread into an unbounded
queue, dropped with the connection), and only when the server closes it is
a new one opened. A close with 1011 (the server's internal error) fails the
case; any other close is the server refusing bad input, as it may."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import given
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from tests.e2e.harness import Stack
from tests.fuzz import health
from tests.fuzz.strategies import CASES, FUZZ, cases

INTERNAL_ERROR = 1011
PONG_TIMEOUT_S = 10.0


def ws_connect(url: str, headers: dict[str, str] | None = None) -> ClientConnection:
    """A client that never stops reading (no queue limit), and never waits
    for a close: when the server closes (session_end, say) while frames of
    the client's are still queued on its side, the server sees the client's
    close reply only after its 10 s close timeout, and a recv() or send()
    waiting on that cost 10 s a close (90 s of a 400-case run)."""
    return connect(
        url,
        additional_headers=headers,
        max_size=None,
        max_queue=None,
        open_timeout=30,
        close_timeout=0.1,
    )


@dataclass
class WsDoor:
    open: Callable[[], ClientConnection]
    # Sent on every fresh connection before the cases' frames (a hello).
    greet: Callable[[ClientConnection], None] = lambda ws: None
    ws: ClientConnection | None = None
    cases: int = 0
    reconnects: int = 0
    closes: dict[int | None, int] = field(default_factory=dict)

    def _connection(self) -> ClientConnection:
        if self.ws is not None and self.ws.protocol.state is not State.OPEN:
            # The server closed: its close frame is in, so the case that
            # caused it is known; waiting for its TCP close costs seconds.
            code = self.ws.protocol.close_rcvd.code if self.ws.protocol.close_rcvd else None
            self.closes[code] = self.closes.get(code, 0) + 1
            assert code != INTERNAL_ERROR, (
                f"the server failed on its side: {self.ws.protocol.close_rcvd}"
            )
            self.ws.socket.close()
            self.ws = None
        if self.ws is None:
            self.ws = self.open()
            self.reconnects += 1
            self.greet(self.ws)
        return self.ws

    def _closed(self, exc: ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd is not None else None
        self.closes[code] = self.closes.get(code, 0) + 1
        self.ws = None
        assert code != INTERNAL_ERROR, f"the server failed on its side: {exc}"

    def send(self, frames: list[str | bytes]) -> None:
        self.cases += 1
        for frame in frames:
            ws = self._connection()
            try:
                ws.send(frame)
            except ConnectionClosed as exc:
                self._closed(exc)
        # A ping after each case: its pong says the server has read the case
        # (it reads at most 16 messages ahead of its handler), so the cases
        # go at the server's pace and none is sent into a closing connection.
        if self.ws is None:
            return
        try:
            pong = self.ws.ping()
        except ConnectionClosed as exc:
            self._closed(exc)
            return
        # A close frame may cross the ping: no pong then, but the state says.
        deadline = time.monotonic() + PONG_TIMEOUT_S
        while not pong.wait(0.02) and self.ws.protocol.state is State.OPEN:
            assert time.monotonic() < deadline, "no pong within 10 s: the server stopped reading"

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def report(self, door: str) -> str:
        return f"{door}: {self.cases} cases, {self.reconnects} connections, closes {self.closes}"


async def fuzz_one_door(
    stack: Stack,
    question: bytes,
    url: str,
    case_frames: Callable[[random.Random], list[str | bytes]],
    name: str,
) -> None:
    """CASES generated frame lists sent over one connection (reopened when
    the server closes it), then the stack must still serve a spoken turn
    with its tasks, memory and logs within bounds."""
    before = await health.snapshot(stack)
    door = WsDoor(lambda: ws_connect(url))

    @FUZZ
    @given(cases(case_frames))
    def case(sent: list[str | bytes]) -> None:
        door.send(sent)

    try:
        await asyncio.to_thread(case)
    finally:
        door.close()
    print(door.report(name))
    assert door.cases >= CASES
    await health.still_serving(stack, question, before)
