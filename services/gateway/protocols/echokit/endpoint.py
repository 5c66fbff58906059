"""EchoKit boards (second-state/echokit_box firmware, protocol of
second-state/echokit_server) at /ws/{device_id}; docs/echokit.md.

A board's conversation outlives its WebSocket: the firmware reconnects with
reconnect=true to speak over an answer or to start a new chat, and expects to
carry on where it was. The session registry keeps the board's session under
the key `echokit:<id>` (and for a grace period once the board drops off); the
endpoint keeps each session's `Board` (board.py), which each connection of the
board is attached to in turn."""

from __future__ import annotations

import asyncio
import http
import logging
import weakref
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from parley.config import EchoKitSettings, ParleySettings
from parley.logs import session_id_var
from parley.tasks import TaskSet
from services.gateway.core.errors import ClientError, ServerBusy
from services.gateway.core.session import GatewaySession
from services.gateway.protocols.echokit import wire
from services.gateway.protocols.echokit.board import SAMPLE_RATE, Board, Link, remote_ip
from services.gateway.protocols.echokit.hello import load_hello
from services.gateway.protocols.endpoint import (
    BUSY_CLOSE_CODE,
    GatewayHost,
    bearer_token,
    boards_need_allowlist,
    device_secret,
    device_token,
    refuse,
    token_matches,
)

log = logging.getLogger("parley.gateway.echokit")

PREFIX = "/ws/"
MAX_DEVICE_ID = 128
# WebSocket 1008, "policy violation": a connection without the board's token
# may not take over (or end) the session of a board that is connected.
IN_USE_CLOSE_CODE = 1008


def device_id_of(path: str) -> str | None:
    """The {id} of /ws/{id}: one non-empty path segment."""
    if not path.startswith(PREFIX):
        return None
    raw = path[len(PREFIX) :]
    if not raw or "/" in raw:
        return None
    device_id = unquote(raw)
    if len(device_id) > MAX_DEVICE_ID or not device_id.isprintable():
        return None
    return device_id


def session_key(device_id: str) -> str:
    return f"echokit:{device_id}"


class SessionInUse(Exception):
    """A connection without the board's token found the board connected."""


class EchoKitEndpoint:
    """/ws/{device_id}?reconnect=&opus=&vowel=&stream_asr= (all false by default)."""

    name = "echokit"

    def __init__(self, settings: ParleySettings) -> None:
        self.settings = settings
        self.cfg: EchoKitSettings = settings.gateway.echokit
        self.secret = device_secret(settings)
        self.need_allowlist = boards_need_allowlist(settings)
        # Each open EchoKit session's board, by session id. Kept here, not
        # found through the session's sink: while the board is away the
        # registry gives the session a stand-in sink.
        self.boards: dict[str, Board] = {}
        # Held while a connection of a board comes or goes, so two connections
        # of one board never race; per board, so one board's slow placement
        # never holds up another's; weak, so ids gone quiet leave nothing behind.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._hello: bytes | None = None
        self._hello_lock = asyncio.Lock()
        self._closing = TaskSet("echokit close")

    def matches(self, path: str) -> bool:
        return device_id_of(path) is not None

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        device_id = device_id_of(url.path)
        try:
            flags = wire.parse_flags(url.query)
        except ValueError as exc:
            return refuse(connection, http.HTTPStatus.BAD_REQUEST, str(exc))
        if flags.record:
            return refuse(
                connection, http.HTTPStatus.NOT_IMPLEMENTED, "record mode is not supported"
            )
        allowed = self.cfg.device_allowlist
        if allowed is not None and device_id not in allowed:
            return refuse(connection, http.HTTPStatus.FORBIDDEN, "device not allowed")
        given = bearer_token(request.headers, url.query)
        asked = self.secret is not None or bool(self.cfg.auth_token)
        proven = given is not None and self.token_proves(device_id or "", given)
        if asked and given is not None and not proven:
            return refuse(connection, http.HTTPStatus.UNAUTHORIZED, "wrong token")
        if self.cfg.auth_token and given is None:
            return refuse(connection, http.HTTPStatus.UNAUTHORIZED, "missing token")
        if allowed is None and not proven and self.need_allowlist:
            return refuse(
                connection,
                http.HTTPStatus.FORBIDDEN,
                "this server is reachable from other machines: list your boards in "
                "gateway.echokit.device_allowlist",
            )
        # The firmware offers permessage-deflate but its WebSocket library
        # rejects compressed frames (as the real server never sends them).
        if "Sec-WebSocket-Extensions" in request.headers:
            del request.headers["Sec-WebSocket-Extensions"]
        return None

    def token_proves(self, device_id: str, given: str | None) -> bool:
        """The board's own token (HMAC of its id, as Xiaozhi's), or the
        shared echokit.auth_token for clients set up with one."""
        if self.secret is not None and token_matches(
            given, device_token(self.secret, "echokit", device_id)
        ):
            return True
        return bool(self.cfg.auth_token) and token_matches(given, self.cfg.auth_token or "")

    def may_take_over(self, request: Request, device_id: str) -> bool:
        """Whether this connection may resume or replace the board's held
        session. The firmware builds its URL itself and cannot carry a token,
        so a board without one only ever gets a fresh conversation, and only
        while no connection of that id is live: an id is a MAC, guessable,
        and must not be enough to hear someone's history or end their chat.
        With no device secret configured (a loopback-only gateway) ids alone
        decide, as the firmware's own server does."""
        if self.secret is None and not self.cfg.auth_token:
            return True
        given = bearer_token(request.headers, urlsplit(request.path).query)
        return self.token_proves(device_id, given)

    async def serve(self, gateway: GatewayHost, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        device_id = device_id_of(url.path)
        assert device_id is not None  # matched already
        link = Link(ws, wire.parse_flags(url.query))
        try:
            board = await self._attach(
                gateway, device_id, link, self.may_take_over(ws.request, device_id)
            )
        except ServerBusy as exc:
            log.info("echokit %s refused: %s", device_id, exc)
            await ws.close(BUSY_CLOSE_CODE, "server busy, try again later")
            return
        except SessionInUse:
            log.warning("echokit %s: takeover without the device token refused", device_id)
            await ws.close(IN_USE_CLOSE_CODE, "device connected; resuming needs its token")
            return
        try:
            await board.serve(link)
        finally:
            await self._detach(gateway, board, link)

    def _lock(self, device_id: str) -> asyncio.Lock:
        lock = self._locks.get(device_id)
        if lock is None:
            lock = self._locks[device_id] = asyncio.Lock()
        return lock

    async def _hello_wav(self) -> bytes:
        async with self._hello_lock:
            if self._hello is None:
                self._hello = await asyncio.to_thread(load_hello, self.cfg)
            return self._hello

    def _board_of(self, gateway: GatewayHost, device_id: str) -> Board | None:
        """The board's conversation Parley still holds, if any."""
        session = gateway.sessions.by_key(session_key(device_id))
        if session is None or session.closed:
            return None
        return self.boards.get(session.session_id)

    async def _attach(
        self, gateway: GatewayHost, device_id: str, link: Link, proven: bool
    ) -> Board:
        lock = self._lock(device_id)
        async with lock:
            board = self._board_of(gateway, device_id)
            if board is not None and board.session is not None:
                session = board.session
                session_id_var.set(session.session_id)
                # The firmware barges in by reconnecting while its old
                # connection is open, from its own address: that much is
                # trusted without a token; another address is someone else.
                trusted = proven or board.address == remote_ip(link)
                if not trusted and board.link is not None and not board.ended:
                    raise SessionInUse(device_id)
                if link.flags.reconnect and not board.ended and trusted:
                    gateway.sessions.take_over(session, board)
                    await board.reattach(link)
                    board.address = remote_ip(link)
                    log.info("echokit %s reconnected to session %s", device_id, session.session_id)
                    return board
                await self._retire(gateway, board, "replaced by a new connection")
            # The real server greets fresh connections only, before anything else.
            if self.cfg.send_hello and not link.flags.reconnect:
                await link.send_hello(await self._hello_wav())
            return await self._open(gateway, device_id, link)

    async def _open(self, gateway: GatewayHost, device_id: str, link: Link) -> Board:
        board = Board(device_id, self.settings, link)

        async def closed(session: GatewaySession, reason: str) -> None:
            # However it ended: replaced, the board gone past the grace, a drain.
            board.shutdown()
            self.boards.pop(session.session_id, None)
            log.info("echokit %s: session %s closed (%s)", device_id, session.session_id, reason)

        session, failures = await gateway.sessions.open(
            board, "echokit", board.mode_settings(), key=session_key(device_id), on_close=closed
        )
        board.session = session
        self.boards[session.session_id] = board
        try:
            await session.update_settings(None, SAMPLE_RATE, SAMPLE_RATE)
        except ClientError as exc:
            log.error("echokit %s: cannot run at 16 kHz: %s", device_id, exc)
        log.info(
            "echokit %s opened session %s (%s)",
            device_id,
            session.session_id,
            ", ".join(f"{k}={v}" for k, v in vars(link.flags).items() if v) or "no flags",
        )
        await session.report_placement(failures)
        return board

    async def _detach(self, gateway: GatewayHost, board: Board, link: Link) -> None:
        lock = self._lock(board.device_id)
        async with lock:
            if board.link is not link:
                return  # replaced by a newer connection already
            board.link = None
            board.listening = False
            session = board.session
            if session is None or session.closed:
                return
            if board.ended:
                await gateway.sessions.close(session, "device disconnected")
                return
            log.info("echokit %s disconnected", board.device_id)
            # The registry cuts the answer (the history keeps what was heard)
            # and closes the session unless the board is back within the grace.
            await gateway.sessions.detach(session, self.cfg.reconnect_grace_s, gateway.draining)

    async def _retire(self, gateway: GatewayHost, board: Board, reason: str) -> None:
        """Closes the board's connection (if any) and its session."""
        board.ended = True
        link, board.link = board.link, None
        if link is not None:
            # Not awaited: a dead peer would hold the lock for the close timeout.
            self._closing.spawn(link.ws.close(1000, reason))
        if board.session is not None:
            await gateway.sessions.close(board.session, reason)
