"""What a protocol adapter gives the gateway: which paths it answers, who may
connect, and how a connection is served. Each protocol lives in its own module
(parley_ws, xiaozhi, echokit, realtime) and drives a GatewaySession."""

from __future__ import annotations

import hmac
import http
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from parley.config import ParleySettings
from services.gateway.core.registry import SessionRegistry

# WebSocket close code 1013, "Try Again Later": every protocol's close when a
# session is refused because the server is full (server_busy).
BUSY_CLOSE_CODE = 1013


class GatewayHost(Protocol):
    """What a protocol adapter sees of the gateway process."""

    @property
    def settings(self) -> ParleySettings: ...

    @property
    def sessions(self) -> SessionRegistry: ...

    @property
    def draining(self) -> bool: ...


class WsEndpoint(Protocol):
    name: str

    def matches(self, path: str) -> bool:
        """Whether this endpoint serves the URL path (query excluded)."""
        ...

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to accept the upgrade, or the HTTP refusal."""
        ...

    async def serve(self, gateway: GatewayHost, ws: ServerConnection) -> None:
        """Serve one connection until it closes; must not raise for bad input."""
        ...


def bearer_token(headers: Headers, query: str) -> str | None:
    """Authorization: Bearer ..., or ?token=... for browsers, which cannot set headers."""
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    values = parse_qs(query).get("token")
    return values[0] if values else None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time, so the token cannot be guessed byte by byte from timings."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def refuse(connection: ServerConnection, status: http.HTTPStatus, text: str) -> Response:
    return connection.respond(status, text if text.endswith("\n") else text + "\n")


def check_token(
    connection: ServerConnection, request: Request, token: str | None, what: str = "token"
) -> Response | None:
    """A 401 unless the request carries `token`; with no token configured, None."""
    given = bearer_token(request.headers, urlsplit(request.path).query)
    if token and not token_matches(given, token):
        return refuse(connection, http.HTTPStatus.UNAUTHORIZED, f"missing or wrong {what}")
    return None
