"""Session placement, instance side: answer placement requests (on this
instance's own subject, which the gateway uses once it knows the instance from
its heartbeats, and on the stage's queue group), own the sessions placed here,
refuse past capacity, announce sessions and load in heartbeats."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from nats.aio.subscription import Subscription

from parley.bus import Bus, heartbeat_subject, place_subject, release_subject
from parley.load import LoadMeter
from parley.metrics import ACTIVE_SESSIONS
from parley.session import StageSession
from parley.v1 import common_pb2, placement_pb2

log = logging.getLogger("parley.placement")

# The refusal of an instance at capacity; the gateway tries another.
FULL = "full"
# A session id is one subject token (parley.v1.s.<id>.<stream>); the
# gateway's are 32 hex digits.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

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
        meter: LoadMeter | None = None,
    ) -> None:
        self.bus = bus
        self.stage = stage
        self.instance_id = instance_id
        self.factory = factory
        self.heartbeat_interval_s = heartbeat_interval_s
        self.idle_timeout_s = idle_timeout_s
        self.sessions: dict[str, StageSession] = {}
        self.meter = meter or LoadMeter(stage, 0)
        # Sessions being opened (an await away from self.sessions): counted
        # against capacity, so two requests at once cannot both take the last slot.
        self._opening: set[str] = set()
        self.draining = False
        self._subs: list[Subscription] = []
        self._heartbeat_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for subject, queue in (
            (place_subject(self.stage, self.instance_id), ""),
            (place_subject(self.stage), self.stage),
        ):
            self._subs.append(
                await self.bus.serve(
                    subject,
                    placement_pb2.PlaceRequest,
                    self._on_place,
                    bad_request=lambda why: placement_pb2.PlaceReply(ok=False, error=why),
                    queue=queue,
                )
            )
        self._heartbeat_task = asyncio.create_task(self._heartbeats())

    async def _on_place(self, req: placement_pb2.PlaceRequest) -> placement_pb2.PlaceReply:
        if not SESSION_ID.fullmatch(req.session_id):
            # Its subjects could not exist: the session would fail to
            # subscribe (nats BadSubjectError, a traceback per request found
            # by tests/fuzz/test_bus.py), or a dot would put it on another's.
            return placement_pb2.PlaceReply(ok=False, error="bad session id")
        if self.draining:
            return placement_pb2.PlaceReply(ok=False, error="draining")
        if req.session_id in self._opening:
            return placement_pb2.PlaceReply(ok=False, error="busy: being opened")
        if req.session_id not in self.sessions:
            held = len(self.sessions) + len(self._opening)
            if self.meter.capacity and held >= self.meter.capacity:
                # The gateway's view of the load may be a heartbeat old: it
                # learns here and tries another instance.
                return placement_pb2.PlaceReply(ok=False, error=FULL)
            self._opening.add(req.session_id)
            try:
                session = self.factory(req.session_id, req.settings, self._forget)
                # Where the previous owner left off (the gateway's last turn id).
                session.last_turn_id = req.last_turn_id
                await session.start()
            except Exception as exc:
                log.exception("cannot open session")
                return placement_pb2.PlaceReply(ok=False, error=str(exc))
            finally:
                self._opening.discard(req.session_id)
            self.sessions[req.session_id] = session
            self._count()
            log.info("%s session placed on %s", self.stage, self.instance_id)
        return placement_pb2.PlaceReply(ok=True, instance_id=self.instance_id)

    async def _forget(self, session_id: str) -> None:
        self.sessions.pop(session_id, None)
        self._count()

    def _count(self) -> None:
        ACTIVE_SESSIONS.labels(self.stage).set(len(self.sessions))
        self.meter.set_sessions(len(self.sessions))

    async def _heartbeats(self) -> None:
        while True:
            try:
                load = self.meter.sample()
                beat = placement_pb2.Heartbeat(
                    stage=self.stage,
                    instance_id=self.instance_id,
                    session_ids=list(self.sessions),
                    draining=self.draining,
                    ts_ms=time.time() * 1000,
                    sessions=load.sessions,
                    capacity=load.capacity,
                    queue_depth=load.queue_depth,
                    step_latency_ms=load.step_latency_ms,
                    load_ratio=load.load_ratio,
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
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()
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
