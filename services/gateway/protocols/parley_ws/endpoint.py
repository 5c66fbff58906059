"""Parley's own WebSocket protocol (docs/protocol.md) on top of GatewaySession."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from parley.config import ParleySettings
from parley.metrics import ERRORS
from services.gateway.audio_check import check_pcm16
from services.gateway.endpoints import check_token
from services.gateway.session import ClientError, GatewaySession, settings_from_json

if TYPE_CHECKING:
    from services.gateway.service import Gateway

log = logging.getLogger("parley.gateway.ws")


class WebSocketSink:
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def send_event(self, event: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(event))
        except ConnectionClosed:
            pass

    async def send_audio(self, pcm: bytes) -> None:
        try:
            await self.ws.send(pcm)
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

    async def serve(self, gateway: Gateway, ws: ServerConnection) -> None:
        sink = WebSocketSink(ws)
        session, failures = await gateway.open_session(sink, "parley")
        try:
            await sink.send_event({"type": "session_started", **session.describe()})
            await session.report_placement(failures)
            protocol = ParleyProtocol(ws, session, gateway.settings.gateway.max_frame_bytes)
            await protocol.run()
        finally:
            await gateway.close_session(session)


def _int_field(msg: dict[str, Any], key: str) -> int | None:
    value = msg.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ClientError("bad_field", f"{key} must be an integer")
    return value


class ParleyProtocol:
    """Reads the client's frames and drives the session."""

    def __init__(self, ws: ServerConnection, session: GatewaySession, max_frame_bytes: int):
        self.ws = ws
        self.session = session
        self.max_frame_bytes = max_frame_bytes

    async def error(self, code: str, message: str) -> None:
        ERRORS.labels("gateway", code).inc()
        log.info("client error %s: %s", code, message)
        await self.session.sink.send_event(
            {
                "type": "error",
                "stage": "gateway",
                "code": code,
                "message": message,
                "recoverable": True,
            }
        )

    async def run(self) -> None:
        async for frame in self.ws:
            try:
                if isinstance(frame, bytes):
                    check_pcm16(frame, self.max_frame_bytes)
                    await self.session.push_audio(frame)
                else:
                    if not await self.on_text(frame):
                        return
            except ClientError as exc:
                await self.error(exc.code, str(exc))

    async def on_text(self, text: str) -> bool:
        """Handle one JSON message; False ends the session."""
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as exc:
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
            await session.sink.send_event({"type": "settings_updated", **session.describe()})
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
            await session.sink.send_event({"type": "pong"})
        elif kind == "session_end":
            return False
        elif kind in ("session_start", "session_resume"):
            wanted = msg.get("session_id")
            if wanted and wanted != session.session_id:
                raise ClientError(
                    "unknown_session",
                    f"session {wanted!r} is not held by this gateway; "
                    f"this connection is session {session.session_id}",
                )
        else:
            raise ClientError("unknown_type", f"unknown message type: {kind!r}")
        return True
