"""What a protocol adapter gives the gateway: which paths it answers, who may
connect, and how a connection is served. Each protocol lives in its own module
(parley_ws, xiaozhi, echokit, realtime) and drives a GatewaySession."""

from __future__ import annotations

import hashlib
import hmac
import http
import ipaddress
import ssl
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


def device_token(secret: str, protocol: str, device_id: str) -> str:
    """A device's own token: HMAC-SHA256 of its id with the server secret
    (per protocol, so a Xiaozhi token is no EchoKit one). One board's token
    opens no other board's session, and none is ever shared."""
    mac = hmac.new(secret.encode(), f"{protocol}:{device_id}".encode(), hashlib.sha256)
    return mac.hexdigest()


def device_secret(settings: ParleySettings) -> str | None:
    """gateway.device_secret, or one derived from gateway.auth_token (one
    secret to deploy), or None: devices are not asked for a token."""
    g = settings.gateway
    if g.device_secret:
        return g.device_secret
    if g.auth_token:
        return hmac.new(g.auth_token.encode(), b"parley device secret", hashlib.sha256).hexdigest()
    return None


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or "": whatever it resolves to, not assumed safe


def boards_need_allowlist(settings: ParleySettings) -> bool:
    """Device firmware cannot prove who it is on first contact (the Xiaozhi
    OTA hands a token to whoever names a Device-Id; an EchoKit board carries
    none), so on a gateway reachable from other machines boards are served
    only from their protocol's device_allowlist."""
    return not is_loopback(settings.gateway.host)


def origin_allowed(headers: Headers, allowed: list[str]) -> bool:
    """A browser page's Origin against gateway.allowed_origins. The page's own
    origin (the gateway's page) always may; a request without Origin is no
    browser page (a device, the CLI: browsers always send one on a
    WebSocket upgrade, so a page cannot leave it out)."""
    origin = headers.get("Origin")
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    host = headers.get("Host")
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def server_tls(settings: ParleySettings) -> ssl.SSLContext | None:
    """gateway.tls_cert/tls_key as a server context, or None (plain)."""
    g = settings.gateway
    if not g.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(g.tls_cert, g.tls_key)
    return context


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
