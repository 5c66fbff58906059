"""Session placement, gateway side: choose each stage's owner from the
instances' heartbeats (the least loaded with room) and ask it on its own
subject (the stage's queue group while no heartbeat is known yet), refuse the
session when every instance of a stage is full, watch owners' heartbeats, and
place a session again when its owner is gone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from parley.bus import Bus, heartbeat_subject, place_subject, release_subject
from parley.config import ConfigError
from parley.metrics import ERRORS, SESSIONS_REFUSED
from parley.placement import FULL
from parley.session_settings import MAX_BACKCHANNEL_CHARS, MAX_BACKCHANNELS, MAX_TEXT_CHARS
from parley.tasks import supervise
from parley.v1 import common_pb2, placement_pb2
from services.gateway.core.errors import ServerBusy

log = logging.getLogger("parley.gateway.placement")

PLACED_STAGES = ("vad", "asr", "llm", "tts")
# Instances asked per stage before placement gives up (each try excludes the
# instances that said no).
MAX_TRIES = 3


class PlacementError(Exception):
    def __init__(self, stage: str, message: str, busy: bool = False) -> None:
        super().__init__(message)
        self.stage = stage
        # Every instance of the stage is full: the session is refused, not
        # left waiting for one.
        self.busy = busy


@dataclass
class InstanceView:
    """What the gateway knows of one stage instance: its last heartbeat, and
    the sessions it placed there since (counted at once, so sessions opened
    between two heartbeats spread out instead of all picking one instance)."""

    instance_id: str
    seen: float
    session_ids: set[str] = field(default_factory=set)
    draining: bool = False
    sessions: int = 0
    capacity: int = 0  # 0: no limit
    queue_depth: int = 0
    load_ratio: float = 0.0

    @property
    def has_room(self) -> bool:
        return not self.draining and (self.capacity == 0 or self.sessions < self.capacity)

    @property
    def ratio(self) -> float:
        """The busy fraction, with the sessions counted since the heartbeat."""
        share = self.sessions / self.capacity if self.capacity else 0.0
        return max(self.load_ratio, share)

    def reserve(self, session_id: str) -> None:
        if session_id not in self.session_ids:
            self.session_ids.add(session_id)
            self.sessions += 1

    def release(self, session_id: str) -> None:
        if session_id in self.session_ids:
            self.session_ids.discard(session_id)
            self.sessions = max(0, self.sessions - 1)

    def heard(self, beat: placement_pb2.Heartbeat, now: float) -> None:
        self.seen = now
        self.session_ids = set(beat.session_ids)
        self.draining = beat.draining
        self.sessions = beat.sessions or len(beat.session_ids)
        self.capacity = beat.capacity
        self.queue_depth = beat.queue_depth
        self.load_ratio = beat.load_ratio


def choose_instance(
    views: Iterable[InstanceView], exclude: Collection[str] = ()
) -> InstanceView | None:
    """The least loaded instance with room (busy fraction, then work waiting,
    then sessions; the id breaks ties so the choice is stable), or None."""
    candidates = [v for v in views if v.has_room and v.instance_id not in exclude]
    return min(
        candidates,
        key=lambda v: (v.ratio, v.queue_depth, v.sessions, v.instance_id),
        default=None,
    )


def largest_settings() -> common_pb2.Settings:
    """The largest settings a client can make the gateway hold: every text at
    its length cap in 4-byte characters, every backchannel slot full."""
    wide = "\U0001f600"
    settings = common_pb2.Settings(
        vad_threshold=0.5,
        min_speech_ms=5000,
        silence_ms=3000,
        max_utterance_ms=120000,
        min_interrupt_ms=5000,
        barge_in=True,
        vad_stats=True,
        early_answer=True,
        turn_detection=True,
        turn_detector=common_pb2.TURN_DETECTOR_TRANSCRIPT,
    )
    for key, chars in MAX_TEXT_CHARS.items():
        setattr(settings, key, wide * chars)
    settings.backchannels.words.extend([wide * MAX_BACKCHANNEL_CHARS] * MAX_BACKCHANNELS)
    return settings


def largest_place_request() -> int:
    """Bytes of the largest PlaceRequest (a 32-hex session id, the largest settings)."""
    request = placement_pb2.PlaceRequest(session_id="f" * 32, settings=largest_settings())
    return request.ByteSize()


@dataclass
class Placement:
    session_id: str
    settings: common_pb2.Settings
    owners: dict[str, str] = field(default_factory=dict)  # stage -> instance id
    placed_at: dict[str, float] = field(default_factory=dict)
    # Told when a stage cannot be placed (again): (stage, message).
    on_error: Callable[[str, str], Awaitable[None]] | None = None
    # Told when a stage's owner is found gone, before it is placed again:
    # (stage, instance id); the session ends what that owner had in flight.
    on_owner_lost: Callable[[str, str], Awaitable[None]] | None = None
    # The last user turn the gateway saw: a new vad owner numbers on from it.
    last_turn_id: Callable[[], int] = lambda: 0
    reported_missing: set[str] = field(default_factory=set)
    # Stages whose placement is under way: the watcher (or a Release) must not
    # place them a second time meanwhile, or two instances would own the
    # stage (measured: with 0.25 s heartbeats a watcher tick often fell
    # inside a session's first placement, and two vads made every turn twice).
    placing: set[str] = field(default_factory=set)


class PlacementClient:
    def __init__(
        self, bus: Bus, timeout_s: float, heartbeat_interval_s: float, misses: int
    ) -> None:
        self.bus = bus
        self.timeout_s = timeout_s
        self.interval_s = heartbeat_interval_s
        self.misses = misses
        self.placements: dict[str, Placement] = {}
        # stage -> instance id -> what its heartbeats said
        self.instances: dict[str, dict[str, InstanceView]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Settings ride in every PlaceRequest: the largest a client can send
        # must fit the bus's message limit, or placement would fail mid-session.
        limit = self.bus.max_payload
        needed = largest_place_request()
        if needed > limit:
            raise ConfigError(
                f"nats.max_payload_bytes ({limit}) is below the largest placement "
                f"request ({needed} bytes: the settings' length caps); raise it"
            )
        await self.bus.subscribe(
            heartbeat_subject("*"), placement_pb2.Heartbeat, self._on_heartbeat
        )
        await self.bus.subscribe(release_subject("*"), placement_pb2.Release, self._on_release)
        self._task = supervise("placement watcher", self._watch)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _alive(self, stage: str) -> list[InstanceView]:
        horizon = time.monotonic() - self.misses * self.interval_s
        return [v for v in self.instances.get(stage, {}).values() if v.seen > horizon]

    def alive_instances(self, stage: str) -> list[str]:
        return [v.instance_id for v in self._alive(stage)]

    def full_stage(self) -> str | None:
        """A stage whose every live instance is full (as last heard), if any:
        a new session would be refused, so it can be refused before it starts."""
        for stage in PLACED_STAGES:
            alive = self._alive(stage)
            if alive and not any(v.has_room for v in alive):
                return stage
        return None

    async def place_session(self, placement: Placement) -> list[PlacementError]:
        """Place every stage, concurrently (one round trip each); returns the
        stages that could not be placed. The watcher keeps retrying those."""
        self.placements[placement.session_id] = placement
        targets = self._admit(placement)
        placement.placing.update(PLACED_STAGES)
        try:
            results = await asyncio.gather(
                *(self._place(placement, stage, targets[stage]) for stage in PLACED_STAGES),
                return_exceptions=True,
            )
        finally:
            placement.placing.difference_update(PLACED_STAGES)
        failures: list[PlacementError] = []
        for result in results:
            if isinstance(result, PlacementError):
                placement.reported_missing.add(result.stage)
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
        busy = next((f for f in failures if f.busy), None)
        if busy is not None:
            SESSIONS_REFUSED.labels(busy.stage).inc()
            raise ServerBusy(busy.stage, f"the server is busy: {busy}; try again later")
        return failures

    def _admit(self, placement: Placement) -> dict[str, InstanceView | None]:
        """An instance with room for every stage, chosen and counted in one
        step (nothing awaited), or ServerBusy. Stage by stage, sessions opened
        at the same moment could each win some stages and lose others, and
        all be refused; admitted whole, the first ones get every stage. A
        stage with no heartbeat heard yet gets None: its queue group."""
        targets: dict[str, InstanceView | None] = {}
        for stage in PLACED_STAGES:
            known = self._alive(stage)
            target = choose_instance(known)
            if target is None and any(not v.draining for v in known):
                for chosen in targets.values():
                    if chosen is not None:
                        chosen.release(placement.session_id)
                self.placements.pop(placement.session_id, None)
                SESSIONS_REFUSED.labels(stage).inc()
                raise ServerBusy(
                    stage, f"the server is busy: every {stage} instance is full; try again later"
                )
            if target is not None:
                target.reserve(placement.session_id)
            targets[stage] = target
        return targets

    async def _place(
        self, placement: Placement, stage: str, first: InstanceView | None = None
    ) -> None:
        """Place one stage: on `first` (already counted by _admit) if given,
        else on the least loaded instance with room, trying others when one
        says no."""
        request = placement_pb2.PlaceRequest(
            session_id=placement.session_id,
            settings=placement.settings,
            last_turn_id=placement.last_turn_id(),
        )
        last_error = "no reply"
        refused: set[str] = set()  # instances that said no (full, draining, gone)
        full: set[str] = set()
        for attempt in range(MAX_TRIES):
            if attempt == 0 and first is not None:
                target: InstanceView | None = first
            else:
                known = self._alive(stage)
                target = choose_instance(known, refused)
                if target is None and known:
                    break  # every instance heard from is full or said no
                if target is not None:
                    # Counted before the answer: sessions opened at the same
                    # moment see it and go elsewhere. Taken back if it says no.
                    target.reserve(placement.session_id)
            # No heartbeat heard yet (the gateway just started): the queue group.
            subject = place_subject(stage, target.instance_id if target else "")
            try:
                reply = await self.bus.request(
                    subject, request, placement_pb2.PlaceReply, self.timeout_s
                )
            except NoRespondersError:
                if target is None:
                    last_error = f"no {stage} instance is running"
                    break
                refused.add(target.instance_id)  # it left since its last heartbeat
                last_error = f"{target.instance_id} is gone"
                continue
            except (TimeoutError, NatsTimeoutError):
                last_error = f"no {stage} instance answered within {self.timeout_s:.1f} s"
                if target is not None:
                    refused.add(target.instance_id)
                continue
            finally:
                if target is not None:
                    target.release(placement.session_id)
            if reply.ok:
                self._placed(placement, stage, reply.instance_id)
                return
            last_error = f"{stage} refused the session: {reply.error}"
            who = target.instance_id if target is not None else "queue group"
            if reply.error == FULL:
                full.add(who)
            if target is not None:
                refused.add(target.instance_id)
                if reply.error == FULL:  # the heartbeat was stale: it is full now
                    target.sessions = max(target.sessions, target.capacity)
        placement.owners.pop(stage, None)
        live = [v for v in self._alive(stage) if not v.draining]
        if (live and all(not v.has_room or v.instance_id in full for v in live)) or (
            not live and full
        ):
            raise PlacementError(stage, f"every {stage} instance is full", busy=True)
        raise PlacementError(stage, last_error)

    def _placed(self, placement: Placement, stage: str, instance_id: str) -> None:
        placement.owners[stage] = instance_id
        placement.placed_at[stage] = time.monotonic()
        placement.reported_missing.discard(stage)
        view = self.instances.setdefault(stage, {}).get(instance_id)
        if view is None:
            view = self.instances[stage][instance_id] = InstanceView(instance_id, time.monotonic())
        view.reserve(placement.session_id)
        log.info("%s placed on %s", stage, instance_id)

    def forget(self, session_id: str) -> None:
        """The session ended: its slots are free again (the owners close it on
        the SessionEnd just published; their next heartbeats confirm)."""
        placement = self.placements.pop(session_id, None)
        if placement is None:
            return
        for stage, owner in placement.owners.items():
            view = self.instances.get(stage, {}).get(owner)
            if view is not None:
                view.release(session_id)

    async def _on_heartbeat(self, beat: placement_pb2.Heartbeat) -> None:
        views = self.instances.setdefault(beat.stage, {})
        view = views.get(beat.instance_id)
        if view is None:
            view = views[beat.instance_id] = InstanceView(beat.instance_id, 0.0)
        # A draining instance has no room: nothing new is sent to it.
        view.heard(beat, time.monotonic())

    async def _on_release(self, release: placement_pb2.Release) -> None:
        placement = self.placements.get(release.session_id)
        if placement and placement.owners.get(release.stage) == release.instance_id:
            log.info("%s released by %s, placing again", release.stage, release.instance_id)
            placement.owners.pop(release.stage, None)
            await self._replace(placement, release.stage)

    async def _replace(self, placement: Placement, stage: str) -> None:
        if stage in placement.placing:
            return
        placement.placing.add(stage)
        try:
            await self._place(placement, stage)
        except PlacementError as exc:
            if stage not in placement.reported_missing and placement.on_error is not None:
                placement.reported_missing.add(stage)
                await placement.on_error(stage, str(exc))
        finally:
            placement.placing.discard(stage)

    async def _watch(self) -> None:
        """Place again what lost its owner, and retry what could not be placed.
        One session's failure is logged and counted; the others go on (and
        the loop itself is supervised: parley.tasks.supervise)."""
        while True:
            await asyncio.sleep(self.interval_s)
            for placement in list(self.placements.values()):
                try:
                    await self._check(placement)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    ERRORS.labels("gateway", "replacement_failed").inc()
                    log.exception("re-placement of session %s failed", placement.session_id)

    async def _check(self, placement: Placement) -> None:
        now = time.monotonic()
        horizon = now - self.misses * self.interval_s
        for stage in PLACED_STAGES:
            if placement.session_id not in self.placements:
                return  # ended meanwhile
            owner = placement.owners.get(stage)
            if owner is None:
                await self._replace(placement, stage)
                continue
            view = self.instances.get(stage, {}).get(owner)
            seen, sessions = (view.seen, view.session_ids) if view else (0.0, set[str]())
            grace = placement.placed_at.get(stage, 0.0) + self.misses * self.interval_s
            lost = seen < horizon or (now > grace and placement.session_id not in sessions)
            if lost:
                log.warning("%s owner %s is gone, placing again", stage, owner)
                # Forgotten first: should the session's hook fail, the next
                # tick still places the stage (and does not call it again).
                placement.owners.pop(stage, None)
                if placement.on_owner_lost is not None:
                    await placement.on_owner_lost(stage, owner)
                await self._replace(placement, stage)
