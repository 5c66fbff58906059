"""An OpenAI Realtime-compatible WebSocket endpoint (docs/realtime.md): apps
written against the Realtime API (GA, or beta with `OpenAI-Beta: realtime=v1`)
talk to Parley by changing their base URL.

This module serves the connection: one Parley session, the client's events
read and handed to client_events.py, bad input answered with Realtime's
error event. Parley's events reach the client through conversation.py."""

from __future__ import annotations

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
from services.gateway.core.errors import ClientError, ServerBusy
from services.gateway.protocols.endpoint import BUSY_CLOSE_CODE, GatewayHost, check_token
from services.gateway.protocols.realtime.client_events import ClientEvents
from services.gateway.protocols.realtime.conversation import RealtimeConversation
from services.gateway.protocols.realtime.events import Dialect, RealtimeClientError, Wire

log = logging.getLogger("parley.gateway.realtime")
_bad_input = BoundedLog(log)

REALTIME_PATHS = ("/v1/realtime",)


class RealtimeEndpoint:
    """The OpenAI Realtime API at /v1/realtime?model=..."""

    name = "realtime"

    def __init__(self, settings: ParleySettings) -> None:
        self.token = settings.gateway.auth_token

    def matches(self, path: str) -> bool:
        return path in REALTIME_PATHS

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        # Without a configured token any API key is accepted: apps must send one.
        return check_token(connection, request, self.token, "API key")

    async def serve(self, gateway: GatewayHost, ws: ServerConnection) -> None:
        assert ws.request is not None
        beta = "realtime=v1" in ws.request.headers.get("OpenAI-Beta", "")
        conv = RealtimeConversation(ws, Dialect(beta))
        model = parse_qs(urlsplit(ws.request.path).query).get("model")
        if model:
            conv.out.config.model = model[0]
        try:
            session, failures = await gateway.sessions.open(
                conv, "realtime", conv.out.config.parley_settings()
            )
        except ServerBusy as exc:
            async with conv.out.lock:
                await conv.out.error(exc.code, str(exc), kind="server_error")
            await ws.close(BUSY_CLOSE_CODE, "server busy")
            return
        try:
            client = ClientEvents(session, conv)
            await client.start()
            await session.report_placement(failures)
            await read_events(ws, client, conv)
        finally:
            # A Realtime client that reconnects starts a new session, as with
            # OpenAI: nothing waits for it to come back.
            await gateway.sessions.close(session)


async def read_events(
    ws: ServerConnection, client: ClientEvents, conv: RealtimeConversation
) -> None:
    """Serve the client's events until the connection or the session ends."""
    try:
        async for frame in ws:
            event_id: str | None = None
            try:
                if isinstance(frame, bytes):
                    raise RealtimeClientError(
                        "invalid_event", "binary frames are not Realtime events; send JSON text"
                    )
                msg = _parse(frame)
                event_id = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
                await client.handle(msg)
            except ClientError as exc:
                await _error(conv, exc, event_id)
            if conv.closed:
                return
    except ConnectionClosed:
        pass


async def _error(conv: RealtimeConversation, exc: ClientError, event_id: str | None) -> None:
    """Realtime's error event; a core ClientError (a sample rate the gateway
    does not take) is an invalid request without a param."""
    ERRORS.labels("gateway", exc.code).inc()
    _bad_input.info("realtime client error %s: %s", exc.code, exc)
    param = exc.param if isinstance(exc, RealtimeClientError) else None
    kind = exc.kind if isinstance(exc, RealtimeClientError) else "invalid_request_error"
    async with conv.out.lock:
        await conv.out.error(exc.code, str(exc), param, event_id, kind)


def _parse(text: str) -> Wire:
    try:
        msg: Any = json_input.loads(text)
    except json_input.BadJson as exc:
        raise RealtimeClientError("invalid_json", f"the event is not valid JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise RealtimeClientError(
            "invalid_event", "an event must be a JSON object with a string 'type'", "type"
        )
    return msg
