"""The gateway's sessions, and their lifetime apart from any one connection.

A connection that drops does not end its conversation: the session is
detached (its answer cut, its output dropped) and kept for a grace period,
during which a new connection that proves it is the same client (the
session's resume token, or a device's own key such as an EchoKit board id)
takes it over with its history. Past the grace period, or when the gateway
drains, it is closed."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterator

from parley.bus import Bus
from parley.config import ParleySettings
from parley.logs import session_id_var
from parley.metrics import SESSIONS_REFUSED, STAGE_LOAD_RATIO, STAGE_SESSIONS
from parley.tasks import TaskSet
from parley.v1 import common_pb2
from services.gateway.core.errors import ClientError, ServerBusy
from services.gateway.core.placement import PlacementClient, PlacementError
from services.gateway.core.session import GatewaySession
from services.gateway.core.sink import ClientSink, DetachedSink

log = logging.getLogger("parley.gateway")

# Told once the session has closed, however it ended, and why.
OnClose = Callable[[GatewaySession, str], Awaitable[None]]


class SessionRegistry:
    def __init__(self, bus: Bus, placement: PlacementClient, settings: ParleySettings) -> None:
        self.bus = bus
        self.placement = placement
        self.settings = settings
        self.sessions: dict[str, GatewaySession] = {}
        self._keys: dict[str, str] = {}  # device key -> session id
        self._grace: dict[str, asyncio.TimerHandle] = {}
        # For adapters that keep per-client state beside a session (EchoKit).
        self._on_close: dict[str, OnClose] = {}
        self._closing = TaskSet("session expiry or takeover")

    def __len__(self) -> int:
        return len(self.sessions)

    def busy_reason(self) -> str | None:
        """Why a new session would be refused now (this gateway at
        gateway.max_sessions, or every instance of a stage full as last
        heard), or None: checked before a WebSocket upgrade (HTTP 503)."""
        limit = self.settings.gateway.max_sessions
        if limit and len(self.sessions) >= limit:
            return f"this gateway holds its {limit} sessions"
        stage = self.placement.full_stage()
        if stage is not None:
            return f"every {stage} instance is full"
        return None

    def _count(self) -> None:
        limit = self.settings.gateway.max_sessions
        STAGE_SESSIONS.labels("gateway").set(len(self.sessions))
        STAGE_LOAD_RATIO.labels("gateway").set(len(self.sessions) / limit if limit else 0.0)

    def __iter__(self) -> Iterator[GatewaySession]:
        return iter(list(self.sessions.values()))

    async def open(
        self,
        sink: ClientSink,
        protocol: str,
        settings: common_pb2.Settings | None = None,
        key: str | None = None,
        on_close: OnClose | None = None,
    ) -> tuple[GatewaySession, list[PlacementError]]:
        """A placed session, registered; end it with close() or detach().
        ServerBusy when this gateway, or every instance of a stage, is full."""
        limit = self.settings.gateway.max_sessions
        if limit and len(self.sessions) >= limit:
            SESSIONS_REFUSED.labels("gateway").inc()
            raise ServerBusy(
                "gateway", f"the server is busy: this gateway holds its {limit} sessions"
            )
        session = GatewaySession(self.bus, self.placement, self.settings, sink, protocol)
        self.sessions[session.session_id] = session
        self._count()
        if key is not None:
            self._keys[key] = session.session_id
        if on_close is not None:
            self._on_close[session.session_id] = on_close
        try:
            failures = await session.open(settings)
        except BaseException:
            await self.close(session)
            raise
        return session, failures

    def by_key(self, key: str) -> GatewaySession | None:
        session_id = self._keys.get(key)
        return self.sessions.get(session_id) if session_id else None

    def detached(self, session: GatewaySession) -> bool:
        return session.session_id in self._grace

    async def close(self, session: GatewaySession, reason: str = "client closed") -> None:
        timer = self._grace.pop(session.session_id, None)
        if timer is not None:
            timer.cancel()
        try:
            await session.close(reason)
        finally:
            if self.sessions.get(session.session_id) is session:
                del self.sessions[session.session_id]
                self._count()
            for key, sid in list(self._keys.items()):
                if sid == session.session_id:
                    del self._keys[key]
            on_close = self._on_close.pop(session.session_id, None)
            if on_close is not None:
                await on_close(session, reason)

    async def detach(self, session: GatewaySession, grace_s: float, draining: bool) -> None:
        """The connection is gone. Nobody hears the rest of the answer (the
        history keeps what was heard); the session waits grace_s for a new
        connection, then closes."""
        if session.closed:
            return
        if grace_s <= 0 or draining:
            await self.close(session, "client disconnected")
            return
        session.attach(DetachedSink())
        await session.drop_unheard_answer("client disconnected")
        loop = asyncio.get_running_loop()
        previous = self._grace.pop(session.session_id, None)
        if previous is not None:
            previous.cancel()
        self._grace[session.session_id] = loop.call_later(
            grace_s,
            lambda: self._closing.spawn(
                self._expire(session, "no reconnect within the grace period")
            ),
        )
        log.info("session %s detached; kept %.0f s for a reconnect", session.session_id, grace_s)

    async def _expire(self, session: GatewaySession, reason: str) -> None:
        if self.detached(session):
            session_id_var.set(session.session_id)
            await self.close(session, reason)

    def take_over(self, session: GatewaySession, sink: ClientSink) -> None:
        """A new connection attaches to the session (detached or not)."""
        timer = self._grace.pop(session.session_id, None)
        if timer is not None:
            timer.cancel()
        session.attach(sink)
        session_id_var.set(session.session_id)

    async def resume(self, session_id: str, token: str, sink: ClientSink) -> GatewaySession:
        """The session with that id, taken over by sink, if token is its resume
        token; ClientError unknown_session otherwise (the same answer for a
        wrong token, so ids cannot be probed)."""
        session = self.sessions.get(session_id)
        if (
            session is None
            or not token
            or not hmac.compare_digest(session.resume_token.encode(), token.encode())
        ):
            raise ClientError(
                "unknown_session",
                f"session {session_id!r} cannot be resumed here "
                "(unknown, expired, or a wrong resume_token)",
            )
        if not self.detached(session):
            # The old connection may not have noticed it is gone yet: cut what
            # it was hearing, as a drop would have, and close it.
            await session.drop_unheard_answer("client reconnected")
            previous = session.sink
            self.take_over(session, sink)
            # Not awaited: a dead peer would hold the resume for its close timeout.
            self._closing.spawn(previous.close("session resumed by another connection"))
        else:
            self.take_over(session, sink)
        log.info("session resumed (%s)", session.protocol)
        return session

    async def close_detached(self) -> None:
        """Draining: sessions nobody is connected to are not waited for."""
        for session_id in list(self._grace):
            session = self.sessions.get(session_id)
            if session is not None:
                await self.close(session, "gateway draining")
