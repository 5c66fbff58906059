"""What every stage keeps per session: its subscriptions, sequence numbers and
the control stream (settings, interrupt, end)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats.aio.subscription import Subscription

from parley.bus import Bus, now_ms, session_subject
from parley.metrics import ERRORS
from parley.v1 import common_pb2, control_pb2, events_pb2

log = logging.getLogger("parley.session")

M = TypeVar("M", bound=Message)


def merge_settings(base: common_pb2.Settings, update: common_pb2.Settings) -> None:
    """Copy the fields set in update onto base (proto3 optional presence)."""
    for field, value in update.ListFields():
        setattr(base, field.name, value)


def setting(settings: common_pb2.Settings, name: str, default: Any) -> Any:
    return getattr(settings, name) if settings.HasField(name) else default


class StageSession:
    """Base of a stage's per-session state. Subclasses add subscriptions in
    start() and react to control commands through the on_* hooks."""

    stage = "stage"

    def __init__(
        self,
        session_id: str,
        bus: Bus,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.session_id = session_id
        self.bus = bus
        self.settings = common_pb2.Settings()
        self.settings.CopyFrom(settings)
        self._subs: list[Subscription] = []
        self._seq: dict[str, int] = defaultdict(int)
        self._on_closed = on_closed
        self.closed = False
        self.last_activity = time.monotonic()

    # --- bus plumbing -----------------------------------------------------
    async def subscribe(
        self, stream: str, msg_type: type[M], handler: Callable[[M], Awaitable[None]]
    ) -> None:
        async def touched(msg: M) -> None:
            self.last_activity = time.monotonic()
            if not self.closed:
                await handler(msg)

        sub = await self.bus.subscribe(session_subject(self.session_id, stream), msg_type, touched)
        self._subs.append(sub)

    def fill_meta(
        self, meta: common_pb2.Meta, stream: str, turn_id: int = 0, response_id: str = ""
    ) -> None:
        self._seq[stream] += 1
        meta.session_id = self.session_id
        meta.seq = self._seq[stream]
        meta.ts_ms = now_ms()
        if turn_id:
            meta.turn_id = turn_id
        if response_id:
            meta.response_id = response_id

    async def publish(self, stream: str, msg: Any, turn_id: int = 0, response_id: str = "") -> None:
        self.fill_meta(msg.meta, stream, turn_id, response_id)
        await self.bus.publish(session_subject(self.session_id, stream), msg)

    async def publish_error(
        self,
        code: str,
        message: str,
        *,
        turn_id: int = 0,
        response_id: str = "",
        recoverable: bool = True,
    ) -> None:
        ERRORS.labels(self.stage, code).inc()
        log.warning("%s error %s: %s", self.stage, code, message)
        event = events_pb2.Event(
            error=events_pb2.Error(
                stage=self.stage, code=code, message=message, recoverable=recoverable
            )
        )
        await self.publish("events", event, turn_id=turn_id, response_id=response_id)

    async def publish_processing(
        self, detail: str, turn_id: int = 0, response_id: str = ""
    ) -> None:
        event = events_pb2.Event(processing=events_pb2.Processing(stage=self.stage, detail=detail))
        await self.publish("events", event, turn_id=turn_id, response_id=response_id)

    # --- lifecycle --------------------------------------------------------
    async def start(self) -> None:
        await self.subscribe("control", control_pb2.Control, self._on_control)

    async def _on_control(self, msg: control_pb2.Control) -> None:
        kind = msg.WhichOneof("command")
        if kind == "end":
            await self.close(msg.end.reason or "session ended")
        elif kind == "settings":
            merge_settings(self.settings, msg.settings.settings)
            await self.on_settings()
        elif kind == "interrupt":
            await self.on_interrupt(msg.interrupt, msg.meta)
        elif kind == "playback":
            await self.on_playback(msg.playback, msg.meta)
        elif kind == "user_text":
            await self.on_user_text(msg.user_text.text, msg.meta)
        elif kind == "commit":
            await self.on_commit(msg.meta)
        elif kind == "tools_changed":
            await self.on_tools_changed()
        elif kind == "dismiss":
            await self.on_dismiss(msg.dismiss.turn_id)
        elif kind == "hold":
            await self.on_hold(msg.hold.turn_id, msg.hold.release)

    async def on_settings(self) -> None:
        pass

    async def on_interrupt(self, interrupt: control_pb2.Interrupt, meta: common_pb2.Meta) -> None:
        pass

    async def on_playback(self, mark: control_pb2.PlaybackMark, meta: common_pb2.Meta) -> None:
        pass

    async def on_user_text(self, text: str, meta: common_pb2.Meta) -> None:
        pass

    async def on_commit(self, meta: common_pb2.Meta) -> None:
        pass

    async def on_tools_changed(self) -> None:
        pass

    async def on_hold(self, turn_id: int, release: bool) -> None:
        pass

    async def on_dismiss(self, turn_id: int) -> None:
        pass

    @property
    def busy(self) -> bool:
        """True while a turn is in progress; drain waits for it."""
        return False

    async def on_close(self) -> None:
        pass

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        log.info("%s session closed: %s", self.stage, reason)
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be gone
                pass
        self._subs.clear()
        try:
            await self.on_close()
        finally:
            if self._on_closed is not None:
                await self._on_closed(self.session_id)
