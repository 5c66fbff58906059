"""Session placement, instance side: answer placement requests on the stage's
queue group, own the sessions placed here, announce them in heartbeats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.subscription import Subscription

from parley.bus import Bus, heartbeat_subject, place_subject, release_subject
from parley.metrics import ACTIVE_SESSIONS
from parley.session import StageSession
from parley.v1 import common_pb2, placement_pb2

log = logging.getLogger("parley.placement")

SessionFactory = Callable[
    [str, common_pb2.Settings, Callable[[str], Awaitable[None]]], StageSession
]


class PlacementServer:
    def __init__(
        self,
        bus: Bus,
        stage: str,
        instance_id: str,
        factory: SessionFactory,
        heartbeat_interval_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.bus = bus
        self.stage = stage
        self.instance_id = instance_id
        self.factory = factory
        self.heartbeat_interval_s = heartbeat_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.sessions: dict[str, StageSession] = {}
        self.draining = False
        self._sub: Subscription | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.bus.serve(
            place_subject(self.stage),
            placement_pb2.PlaceRequest,
            self._on_place,
            bad_request=lambda why: placement_pb2.PlaceReply(ok=False, error=why),
            queue=self.stage,
        )
        self._heartbeat_task = asyncio.create_task(self._heartbeats())

    async def _on_place(self, req: placement_pb2.PlaceRequest) -> placement_pb2.PlaceReply:
        if self.draining:
            return placement_pb2.PlaceReply(ok=False, error="draining")
        if req.session_id not in self.sessions:
            session = self.factory(req.session_id, req.settings, self._forget)
            try:
                await session.start()
            except Exception as exc:
                log.exception("cannot open session")
                return placement_pb2.PlaceReply(ok=False, error=str(exc))
            self.sessions[req.session_id] = session
            ACTIVE_SESSIONS.labels(self.stage).set(len(self.sessions))
            log.info("%s session placed on %s", self.stage, self.instance_id)
        return placement_pb2.PlaceReply(ok=True, instance_id=self.instance_id)

    async def _forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        ACTIVE_SESSIONS.labels(self.stage).set(len(self.sessions))

    async def _heartbeats(self) -> None:
        while True:
            try:
                beat = placement_pb2.Heartbeat(
                    stage=self.stage,
                    instance_id=self.instance_id,
                    session_ids=list(self.sessions),
                    draining=self.draining,
                    ts_ms=time.time() * 1000,
                )
                await self.bus.publish(heartbeat_subject(self.stage), beat)
                await self._close_idle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bus hiccup must not stop the heartbeat
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.heartbeat_interval_s)

    async def _close_idle(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if now - session.last_activity > self.idle_timeout_s and not session.busy:
                await session.close("idle timeout")

    async def drain(self, timeout_s: float) -> None:
        """Stop taking sessions, let turns in progress finish, then hand the
        remaining sessions back so the gateway places them elsewhere."""
        self.draining = True
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(s.busy for s in self.sessions.values()):
            await asyncio.sleep(0.1)
        for session_id, session in list(self.sessions.items()):
            release = placement_pb2.Release(
                session_id=session_id, instance_id=self.instance_id, stage=self.stage
            )
            try:
                await self.bus.publish(release_subject(self.stage), release)
            except Exception as exc:
                log.warning("cannot announce release of %s: %s", session_id, exc)
            await session.close("instance draining")
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
