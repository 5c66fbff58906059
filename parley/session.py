"""What every stage keeps per session: its subscriptions, sequence numbers and
the control stream (settings, interrupt, end)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from parley.bus import Bus, Subscriptions, now_ms, session_subject
from parley.config import ParleySettings
from parley.metrics import ERRORS
from parley.session_settings import SessionSettings, resolve
from parley.v1 import common_pb2, control_pb2, events_pb2

log = logging.getLogger("parley.session")

M = TypeVar("M", bound=Message)


def merge_settings(base: common_pb2.Settings, update: common_pb2.Settings) -> None:
    """Copy the fields set in update onto base (proto3 optional presence)."""
    for field, value in update.ListFields():
        if field.message_type is not None:  # a message field is replaced whole
            getattr(base, field.name).CopyFrom(value)
        else:
            setattr(base, field.name, value)


class MetaStamper:
    """Fills the Meta every session message carries: per-stream sequence
    numbers (strictly increasing per publisher), the session, the time."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._seq: dict[str, int] = defaultdict(int)

    def stamp(
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
        defaults: ParleySettings | None = None,
    ) -> None:
        self.session_id = session_id
        self.defaults = defaults or ParleySettings.model_construct()
        self._in_force: SessionSettings | None = None
        self.bus = bus
        self.settings = common_pb2.Settings()
        self.settings.CopyFrom(settings)
        self._subs = Subscriptions()
        self._stamper = MetaStamper(session_id)
        self._on_closed = on_closed
        self.closed = False
        # The gateway ended the session (not an idle timeout or a drain):
        # nobody will take it over, so what is stored of it can go.
        self.ended = False
        # Where the session's previous owner left off (PlaceRequest): the
        # last user turn the gateway saw, 0 for a new session.
        self.last_turn_id = 0
        self.last_activity = time.monotonic()

    @property
    def in_force(self) -> SessionSettings:
        """The session's settings, its own where set, else the defaults."""
        if self._in_force is None:
            self._in_force = resolve(self.settings, self.defaults)
        return self._in_force

    # --- bus plumbing -----------------------------------------------------
    async def subscribe(
        self, stream: str, msg_type: type[M], handler: Callable[[M], Awaitable[None]]
    ) -> None:
        async def touched(msg: M) -> None:
            self.last_activity = time.monotonic()
            if not self.closed:
                await handler(msg)

        self._subs.add(
            await self.bus.subscribe(session_subject(self.session_id, stream), msg_type, touched)
        )

    def fill_meta(
        self, meta: common_pb2.Meta, stream: str, turn_id: int = 0, response_id: str = ""
    ) -> None:
        self._stamper.stamp(meta, stream, turn_id, response_id)

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
            self.ended = True
            await self.close(msg.end.reason or "session ended")
        elif kind == "settings":
            merge_settings(self.settings, msg.settings.settings)
            self._in_force = None
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
        await self._subs.close()
        try:
            await self.on_close()
        finally:
            if self._on_closed is not None:
                await self._on_closed(self.session_id)
