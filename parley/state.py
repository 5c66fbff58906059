"""What must outlive a process, in NATS JetStream KV: the buckets Parley keeps
(opened with the settings each needs, created if missing, else bound), and a
record per key written with compare-and-set on its revision.

Buckets (docs/architecture.md, "State"):
- `parley_history`: a session's conversation (llm), key the session id.
- `parley_sessions`: the session record (reserved: not written yet).

The engine's guarantees do the work: `max_age` expires a value that many
seconds after its last write, `history=1` keeps only the latest value, and a
write that names the revision it read fails if anyone wrote since, which is
how an instance that lost a session finds out instead of overwriting the new
owner's state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from parley.config import StateSettings
from parley.metrics import ERRORS
from parley.tasks import TaskSet

log = logging.getLogger("parley.state")

HISTORY = "parley_history"
SESSIONS = "parley_sessions"

# JetStream's error when a stream exists with another configuration.
_STREAM_NAME_IN_USE = 10058


class StateUnavailable(RuntimeError):
    """The state store cannot be opened; the message says what to do."""


@dataclass(frozen=True)
class Bucket:
    name: str
    description: str
    ttl: Callable[[StateSettings], float]


BUCKETS = {
    HISTORY: Bucket(HISTORY, "Parley: each session's conversation", lambda s: s.history_ttl_s),
    SESSIONS: Bucket(SESSIONS, "Parley: each session's record", lambda s: s.session_ttl_s),
}


def bucket_config(name: str, settings: StateSettings) -> KeyValueConfig:
    bucket = BUCKETS[name]
    return KeyValueConfig(
        bucket=bucket.name,
        description=bucket.description,
        # Only the latest value of a key: state, not a log.
        history=1,
        ttl=bucket.ttl(settings),
        max_value_size=settings.max_value_bytes,
        storage=StorageType.FILE,
        replicas=settings.replicas,
        # Reads answered by any replica, without a consumer.
        direct=True,
    )


# A JetStream cluster answers only once its servers have met and elected a
# meta leader: pods starting together (the Kubernetes container test) reach a
# NATS whose JetStream is not up yet for some seconds. Waiting for it
# (state.start_wait_s) is what the stage's startupProbe allows for; a
# JetStream that never comes is still a clear start error.
START_RETRY_S = 1.0


async def open_bucket(nc: NatsClient, name: str, settings: StateSettings) -> KeyValue:
    """open_bucket_once, retried while JetStream does not answer yet (up to
    state.start_wait_s)."""
    deadline = asyncio.get_running_loop().time() + settings.start_wait_s
    while True:
        try:
            return await open_bucket_once(nc, name, settings)
        except StateUnavailable as exc:
            # No responders: this server has no JetStream at all, which
            # waiting will not change; a timeout or "unavailable" is one
            # still electing its leader.
            if not isinstance(exc.__cause__, _NOT_READY):
                raise
            if asyncio.get_running_loop().time() >= deadline:
                raise
            log.warning("%s; retrying", exc)
            await asyncio.sleep(START_RETRY_S)


async def open_bucket_once(nc: NatsClient, name: str, settings: StateSettings) -> KeyValue:
    """The bucket, created with its settings if it does not exist yet; one made
    earlier with other settings is used as it is (a warning says which), so
    two versions running side by side during an upgrade do not fight."""
    js = nc.jetstream(timeout=settings.timeout_s)
    config = bucket_config(name, settings)
    try:
        return await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            why = exc.description
            raise StateUnavailable(f"cannot create the KV bucket {name}: {why}") from exc
        kv = await js.key_value(name)
        info = await js.stream_info(f"KV_{name}")
        log.warning(
            "KV bucket %s exists with other settings (max_age %s s, replicas %s, max value %s "
            "bytes); using it as it is",
            name,
            info.config.max_age,
            info.config.num_replicas,
            info.config.max_msg_size,
        )
        return kv
    except _NOT_ANSWERING as exc:
        where = nc.connected_url.netloc if nc.connected_url else "NATS"
        raise StateUnavailable(
            f"JetStream does not answer on {where} ({type(exc).__name__}): start nats-server"
            " with JetStream (-js -sd DIR; `parley up` does) or set state.enabled = false"
        ) from exc


_NOT_READY = (ServiceUnavailableError, NatsTimeoutError, TimeoutError)
_NOT_ANSWERING = (NoRespondersError, *_NOT_READY)


class CasRecord:
    """One key written by one owner at a time. load() reads it with its
    revision; every save names the revision last read or written, so a save
    after someone else wrote fails: this owner has lost the key (the session
    was placed elsewhere) and stops writing (`lost`).

    save_soon() writes in the background, one write at a time, the latest
    value each time (a burst of changes is one write): the turn never waits
    for the store."""

    def __init__(self, kv: KeyValue, key: str, service: str, max_bytes: int) -> None:
        self.kv = kv
        self.key = key
        self.service = service
        self.max_bytes = max_bytes
        self.revision = 0  # 0: the key did not exist when last seen
        self.lost = False
        self.deleted = False
        self._snapshot: Callable[[], bytes] | None = None
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._tasks = TaskSet(f"state writer {key}", service)

    async def load(self) -> bytes | None:
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:
            self.revision = 0
            return None
        self.revision = entry.revision or 0
        return entry.value

    @property
    def pending(self) -> bool:
        """A change not yet written (or being written)."""
        return self._dirty.is_set() or (self._writer is not None and not self._writer.done())

    def save_soon(self, snapshot: Callable[[], bytes]) -> None:
        """Write snapshot() soon: called when the write starts, so it is the
        latest value."""
        if self.lost or self.deleted:
            return
        self._snapshot = snapshot
        self._dirty.set()
        if self._writer is None or self._writer.done():
            self._writer = self._tasks.spawn(self._write_loop())

    async def flush(self, timeout_s: float) -> None:
        """Wait for the writes under way (at most timeout_s)."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer}, timeout=timeout_s)

    async def _write_loop(self) -> None:
        while self._dirty.is_set() and not self.lost:
            self._dirty.clear()
            assert self._snapshot is not None
            await self.save(self._snapshot())

    async def save(self, value: bytes) -> bool:
        """Compare-and-set; False when the key was lost (or the write failed)."""
        if self.lost:
            return False
        if len(value) > self.max_bytes:
            ERRORS.labels(self.service, "state_too_big").inc()
            log.warning("%s not stored: %d bytes, over %d", self.key, len(value), self.max_bytes)
            return False
        try:
            if self.revision:
                self.revision = await self.kv.update(self.key, value, last=self.revision)
            else:
                self.revision = await self.kv.create(self.key, value)
            return True
        except KeyWrongLastSequenceError:
            # Written by someone else since we read it: the session is theirs now.
            self.lost = True
            ERRORS.labels(self.service, "state_conflict").inc()
            log.warning(
                "%s was written by another owner since revision %d: no longer writing it",
                self.key,
                self.revision,
            )
            return False
        except (APIError, NatsTimeoutError, TimeoutError, NoRespondersError) as exc:
            # The store is down or slow: the conversation goes on in memory,
            # the next change tries again from the same revision.
            ERRORS.labels(self.service, "state_write_failed").inc()
            log.warning("cannot store %s: %s", self.key, exc)
            return False

    async def delete(self, timeout_s: float) -> None:
        """The session is over: the write under way finishes (up to timeout_s,
        so the revision is the latest), then the key goes, unless someone
        else owns it; nothing is written after."""
        self.deleted = True
        self._dirty.clear()
        await self.flush(timeout_s)
        self._tasks.cancel_all()
        if self.lost or not self.revision:
            return
        try:
            await self.kv.delete(self.key, last=self.revision)
        except KeyWrongLastSequenceError:
            self.lost = True
        except (APIError, NatsTimeoutError, TimeoutError, NoRespondersError) as exc:
            log.warning("cannot delete %s (it expires by itself): %s", self.key, exc)
