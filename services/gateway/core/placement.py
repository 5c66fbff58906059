"""Session placement, gateway side: ask each stage's queue group for an owner,
watch owners' heartbeats, and place a session again when its owner is gone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from parley.bus import Bus, heartbeat_subject, place_subject, release_subject
from parley.v1 import common_pb2, placement_pb2

log = logging.getLogger("parley.gateway.placement")

PLACED_STAGES = ("vad", "asr", "llm", "tts")


class PlacementError(Exception):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass
class Placement:
    session_id: str
    settings: common_pb2.Settings
    owners: dict[str, str] = field(default_factory=dict)  # stage -> instance id
    placed_at: dict[str, float] = field(default_factory=dict)
    # Told when a stage cannot be placed (again): (stage, message).
    on_error: Callable[[str, str], Awaitable[None]] | None = None
    reported_missing: set[str] = field(default_factory=set)


class PlacementClient:
    def __init__(
        self, bus: Bus, timeout_s: float, heartbeat_interval_s: float, misses: int
    ) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.interval_s = heartbeat_interval_s
        self.misses = misses
        self.placements: dict[str, Placement] = {}
        # instance id -> (last heartbeat, sessions it reported)
        self.instances: dict[str, tuple[float, set[str]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.subscribe(
            heartbeat_subject("*"), placement_pb2.Heartbeat, self._on_heartbeat
        )
        await self.bus.subscribe(release_subject("*"), placement_pb2.Release, self._on_release)
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def alive_instances(self, stage: str) -> list[str]:
        horizon = time.monotonic() - self.misses * self.interval_s
        return [
            i
            for i, (seen, _) in self.instances.items()
            if i.startswith(f"{stage}-") and seen > horizon
        ]

    async def place_session(self, placement: Placement) -> list[PlacementError]:
        """Place every stage, concurrently (one round trip each); returns the
        stages that could not be placed. The watcher keeps retrying those."""
        self.placements[placement.session_id] = placement
        results = await asyncio.gather(
            *(self._place(placement, stage) for stage in PLACED_STAGES), return_exceptions=True
        )
        failures: list[PlacementError] = []
        for result in results:
            if isinstance(result, PlacementError):
                placement.reported_missing.add(result.stage)
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
        return failures

    async def _place(self, placement: Placement, stage: str) -> None:
        request = placement_pb2.PlaceRequest(
            session_id=placement.session_id, settings=placement.settings
        )
        last_error = "no reply"
        # A draining instance says no; the queue group picks another on retry.
        for _ in range(3):
            try:
                reply = await self.bus.request(
                    place_subject(stage), request, placement_pb2.PlaceReply, self.timeout_s
                )
            except NoRespondersError:
                last_error = f"no {stage} instance is running"
                break
            except (TimeoutError, NatsTimeoutError):
                last_error = f"no {stage} instance answered within {self.timeout_s:.1f} s"
                continue
            if reply.ok:
                placement.owners[stage] = reply.instance_id
                placement.placed_at[stage] = time.monotonic()
                placement.reported_missing.discard(stage)
                self.instances.setdefault(reply.instance_id, (time.monotonic(), set()))
                log.info("%s placed on %s", stage, reply.instance_id)
                return
            last_error = f"{stage} refused the session: {reply.error}"
        placement.owners.pop(stage, None)
        raise PlacementError(stage, last_error)

    def forget(self, session_id: str) -> None:
        self.placements.pop(session_id, None)

    async def _on_heartbeat(self, beat: placement_pb2.Heartbeat) -> None:
        if beat.draining:
            # Don't count a draining instance as an owner-to-be; its releases follow.
            pass
        self.instances[beat.instance_id] = (time.monotonic(), set(beat.session_ids))

    async def _on_release(self, release: placement_pb2.Release) -> None:
        placement = self.placements.get(release.session_id)
        if placement and placement.owners.get(release.stage) == release.instance_id:
            log.info("%s released by %s, placing again", release.stage, release.instance_id)
            placement.owners.pop(release.stage, None)
            await self._replace(placement, release.stage)

    async def _replace(self, placement: Placement, stage: str) -> None:
        try:
            await self._place(placement, stage)
        except PlacementError as exc:
            if stage not in placement.reported_missing and placement.on_error is not None:
                placement.reported_missing.add(stage)
                await placement.on_error(stage, str(exc))

    async def _watch(self) -> None:
        """Place again what lost its owner, and retry what could not be placed."""
        while True:
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            horizon = now - self.misses * self.interval_s
            for placement in list(self.placements.values()):
                for stage in PLACED_STAGES:
                    owner = placement.owners.get(stage)
                    if owner is None:
                        await self._replace(placement, stage)
                        continue
                    seen, sessions = self.instances.get(owner, (0.0, set()))
                    grace = placement.placed_at.get(stage, 0.0) + self.misses * self.interval_s
                    lost = seen < horizon or (now > grace and placement.session_id not in sessions)
                    if lost:
                        log.warning("%s owner %s is gone, placing again", stage, owner)
                        placement.owners.pop(stage, None)
                        await self._replace(placement, stage)
