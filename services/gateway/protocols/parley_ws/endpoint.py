"""Parley's own WebSocket protocol (docs/protocol.md) on top of GatewaySession."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley import json_input
from parley.config import ParleySettings
from parley.logs import BoundedLog
from parley.metrics import ERRORS
from services.gateway.core import events as ev
from services.gateway.core.audio_check import check_pcm16
from services.gateway.core.errors import ClientError, ServerBusy
from services.gateway.core.placement import PlacementError
from services.gateway.core.session import GatewaySession
from services.gateway.core.settings import settings_from_json
from services.gateway.core.sink import ClientSink
from services.gateway.protocols.endpoint import BUSY_CLOSE_CODE, GatewayHost, check_token
from services.gateway.protocols.parley_ws.serializer import to_json

log = logging.getLogger("parley.gateway.ws")
_bad_input = BoundedLog(log)


class WebSocketSink(ClientSink):
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def send_json(self, message: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(message))
        except ConnectionClosed:
            pass

    async def send_event(self, event: ev.SessionEvent) -> None:
        await self.send_json(to_json(event))

    async def send_audio(self, frame: ev.AudioOut) -> None:
        try:
            await self.ws.send(frame.pcm)
        except ConnectionClosed:
            pass

    async def close(self, reason: str) -> None:
        await self.ws.close(1000, reason)


PARLEY_PATHS = ("/v1/ws", "/ws")


class ParleyEndpoint:
    """Parley's own protocol at /v1/ws (and /ws)."""

    name = "parley"

    def __init__(self, settings: ParleySettings) -> None:
        self.token = settings.gateway.auth_token

    def matches(self, path: str) -> bool:
        return path in PARLEY_PATHS

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        return check_token(connection, request, self.token)

    async def serve(self, gateway: GatewayHost, ws: ServerConnection) -> None:
        sink = WebSocketSink(ws)
        resumed, refusal = await self._resume_from_url(gateway, ws, sink)
        failures: list[PlacementError] = []
        if resumed is not None:
            session = resumed
        else:
            try:
                session, failures = await gateway.sessions.open(sink, "parley")
            except ServerBusy as exc:
                # Refused rather than served slowly; 1013 is WebSocket's "try again later".
                await sink.send_event(ev.Error("gateway", exc.code, str(exc), False))
                await ws.close(BUSY_CLOSE_CODE, "server busy")
                return
        protocol = ParleyProtocol(gateway, ws, sink, session)
        ended = False
        try:
            await sink.send_event(ev.SessionStarted(session.info(), resumed=resumed is not None))
            if refusal is not None:
                await sink.send_event(refusal)
            await session.report_placement(failures)
            ended = await protocol.run()
        finally:
            session = protocol.session
            if session.sink is not sink:
                pass  # another connection has taken the session over
            elif ended or session.closed:
                await gateway.sessions.close(session)
            else:
                await gateway.sessions.detach(
                    session, gateway.settings.gateway.resume_grace_s, gateway.draining
                )

    @staticmethod
    async def _resume_from_url(
        gateway: GatewayHost, ws: ServerConnection, sink: WebSocketSink
    ) -> tuple[GatewaySession | None, ev.Error | None]:
        """`?session_id=...&resume_token=...` takes the session back at connect,
        opening no fresh one: a full gateway still lets its own sessions return
        (session_resume as a message would first need a session of its own). A
        session that cannot be resumed gets a fresh one, and the refusal is
        told right after its session_started."""
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        wanted, token = query.get("session_id"), query.get("resume_token")
        if not wanted or not token:
            return None, None
        try:
            return await gateway.sessions.resume(wanted[0], token[0], sink), None
        except ClientError as exc:
            return None, ev.Error("gateway", exc.code, str(exc), True)


def _int_field(msg: dict[str, Any], key: str) -> int | None:
    value = msg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClientError("bad_field", f"{key} must be an integer")
    return value


class ParleyProtocol:
    """Reads the client's frames and drives the session."""

    def __init__(
        self,
        gateway: GatewayHost,
        ws: ServerConnection,
        sink: WebSocketSink,
        session: GatewaySession,
    ) -> None:
        self.gateway = gateway
        self.ws = ws
        self.sink = sink
        self.session = session
        self.max_frame_bytes = gateway.settings.gateway.max_frame_bytes

    async def error(self, code: str, message: str) -> None:
        ERRORS.labels("gateway", code).inc()
        _bad_input.info("client error %s: %s", code, message)
        await self.sink.send_event(ev.Error("gateway", code, message, True))

    async def run(self) -> bool:
        """Serve frames until the connection closes (False) or the client ends
        the session (True)."""
        try:
            async for frame in self.ws:
                try:
                    if isinstance(frame, bytes):
                        check_pcm16(frame, self.max_frame_bytes)
                        await self.session.push_audio(frame)
                    elif not await self.on_text(frame):
                        return True
                except ClientError as exc:
                    await self.error(exc.code, str(exc))
        except ConnectionClosed:
            pass
        return False

    async def on_text(self, text: str) -> bool:
        """Handle one JSON message; False ends the session."""
        try:
            msg = json_input.loads(text)
        except json_input.BadJson as exc:
            raise ClientError("bad_json", f"text frame is not valid JSON: {exc}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ClientError("bad_json", "a JSON message must be an object with a string 'type'")
        kind = msg["type"]
        session = self.session
        if kind == "settings_update":
            settings = settings_from_json(msg["settings"]) if "settings" in msg else None
            await session.update_settings(
                settings,
                _int_field(msg, "input_sample_rate"),
                _int_field(msg, "output_sample_rate"),
            )
            await self.sink.send_event(ev.SettingsUpdated(session.info()))
        elif kind == "text_input":
            text_value = msg.get("text")
            if not isinstance(text_value, str) or not text_value.strip():
                raise ClientError("bad_field", "text_input needs a non-empty string 'text'")
            await session.text_input(text_value.strip())
        elif kind == "commit":
            await session.commit()
        elif kind == "interrupt":
            await session.interrupt()
        elif kind == "playback_mark":
            rid, played = msg.get("response_id"), msg.get("played_ms")
            if not isinstance(rid, str) or not isinstance(played, int | float):
                raise ClientError("bad_field", "playback_mark needs response_id and played_ms")
            await session.playback_mark(rid, float(played))
        elif kind == "ping":
            await self.sink.send_json({"type": "pong"})
        elif kind == "session_end":
            return False
        elif kind == "session_resume":
            await self.resume(msg)
        elif kind == "session_start":
            wanted = msg.get("session_id")
            if wanted and wanted != session.session_id:
                raise ClientError(
                    "unknown_session",
                    f"session {wanted!r} is not this connection's; "
                    f"this connection is session {session.session_id} "
                    "(use session_resume with its resume_token to take one over)",
                )
        else:
            raise ClientError("unknown_type", f"unknown message type: {kind!r}")
        return True

    async def resume(self, msg: dict[str, Any]) -> None:
        """Take over an earlier session of this client (a dropped connection,
        within the grace period); the one opened for this connection ends."""
        wanted, token = msg.get("session_id"), msg.get("resume_token", "")
        if not isinstance(wanted, str) or not isinstance(token, str):
            raise ClientError(
                "bad_field", "session_resume needs a string session_id and resume_token"
            )
        if wanted == self.session.session_id:
            return
        resumed = await self.gateway.sessions.resume(wanted, token, self.sink)
        fresh, self.session = self.session, resumed
        await self.gateway.sessions.close(fresh, "resumed an earlier session")
        await self.sink.send_event(ev.SessionStarted(resumed.info(), resumed=True))
