"""The gateway process: the WebSocket server (one port, an endpoint per
protocol by URL path, the browser page), the Xiaozhi OTA's HTTP port, the
gRPC API, and the session registry they share."""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from parley.bus import Bus
from parley.config import ParleySettings
from parley.errors import StartRefused
from parley.service import Service, run
from services.gateway.core.placement import PlacementClient
from services.gateway.core.registry import SessionRegistry
from services.gateway.protocols.browser import page as web_page
from services.gateway.protocols.echokit.endpoint import EchoKitEndpoint
from services.gateway.protocols.endpoint import (
    WsEndpoint,
    is_loopback,
    origin_allowed,
    refuse,
    server_tls,
)
from services.gateway.protocols.grpc.api import start_grpc_server, stop_grpc_server
from services.gateway.protocols.parley_ws.endpoint import ParleyEndpoint
from services.gateway.protocols.realtime.endpoint import RealtimeEndpoint
from services.gateway.protocols.xiaozhi.endpoint import XiaozhiEndpoint
from services.gateway.protocols.xiaozhi.ota import start_http_server

log = logging.getLogger("parley.gateway")


def check_secure(settings: ParleySettings) -> None:
    """Reachable from other machines means anyone there may talk to the
    agent, hear it, and call its tools: refuse to start without a token.
    Refusing rather than generating one: a generated token printed on a
    container's stdout ends up in log collectors, and an operator who binds
    0.0.0.0 on purpose can set one (Kubernetes gives it from parley-secrets)."""
    g = settings.gateway
    if not is_loopback(g.host) and not g.auth_token:
        raise StartRefused(
            f"gateway.host is {g.host!r} (reachable from other machines) and "
            "gateway.auth_token is not set: set one (e.g. PARLEY_GATEWAY__AUTH_TOKEN="
            "\"$(python -c 'import secrets; print(secrets.token_urlsafe(32))')\"), "
            "or bind 127.0.0.1 (docs/security.md)"
        )


def endpoints(settings: ParleySettings) -> list[WsEndpoint]:
    """Every protocol the gateway speaks, first match wins."""
    return [
        ParleyEndpoint(settings),
        XiaozhiEndpoint(settings),
        EchoKitEndpoint(settings),
        RealtimeEndpoint(settings),
    ]


class Gateway:
    def __init__(self, settings: ParleySettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        g = settings.gateway
        self.placement = PlacementClient(
            bus, g.placement_timeout_s, g.heartbeat_interval_s, g.heartbeat_misses
        )
        self.sessions = SessionRegistry(bus, self.placement, settings)
        self.draining = False
        self.server: Server | None = None
        self.endpoints = endpoints(settings)
        self.grpc_server: Any = None
        self.grpc_port = 0
        self.http_runner: Any = None
        self.http_port = 0
        self.port = 0

    async def start(self) -> str:
        check_secure(self.settings)
        await self.placement.start()
        g = self.settings.gateway
        tls = server_tls(self.settings)
        self.server = await serve(
            self.handle,
            g.host,
            g.port,
            max_size=g.max_message_bytes,
            process_request=self.process_request,
            ssl=tls,
        )
        self.port = int(self.server.sockets[0].getsockname()[1])
        self.grpc_server, self.grpc_port = await start_grpc_server(self, g.host, g.grpc_port)
        self.http_runner, self.http_port = await start_http_server(self.settings, self.port, tls)
        scheme = "wss" if tls else "ws"
        return (
            f"{scheme}://{g.host}:{self.port}/v1/ws http=:{self.http_port} (xiaozhi OTA) "
            f"grpc=:{self.grpc_port}"
        )

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if url.path == "/readyz":
            if self.bus.connected and not self.draining:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            page = web_page.respond(connection, url.path)
            if page is not None:
                return page
        endpoint = self.endpoint_for(url.path)
        if endpoint is None:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"no endpoint at {url.path}\n")
        if self.draining:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        # Before any token: a page elsewhere in the user's browser must not
        # drive a gateway on localhost or the LAN (it cannot read the
        # answer's headers, but a WebSocket is not bound by CORS).
        if not origin_allowed(request.headers, self.settings.gateway.allowed_origins):
            return refuse(connection, http.HTTPStatus.FORBIDDEN, "origin not allowed")
        refusal = endpoint.authorize(connection, request)
        if refusal is not None:
            return refusal
        # Full as last heard: refused before the upgrade. A view a heartbeat
        # old that misses it is caught at placement (each protocol's server_busy).
        # A client taking back its own session (an EchoKit board's
        # reconnect=true, a Parley WS resume_token) holds its capacity already.
        resuming = "reconnect=true" in url.query or "resume_token=" in url.query
        busy = None if resuming else self.sessions.busy_reason()
        if busy is not None:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"server_busy: {busy}\n")
        return None

    def endpoint_for(self, path: str) -> WsEndpoint | None:
        return next((e for e in self.endpoints if e.matches(path)), None)

    async def handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        endpoint = self.endpoint_for(urlsplit(ws.request.path).path)
        if endpoint is None:  # refused in process_request already
            return
        try:
            await endpoint.serve(self, ws)
        except Exception:
            log.exception("%s connection failed", endpoint.name)

    async def drain(self) -> None:
        self.draining = True
        await self.sessions.close_detached()
        deadline = asyncio.get_running_loop().time() + self.settings.gateway.drain_timeout_s
        while len(self.sessions) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            await self.sessions.close_detached()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.grpc_server is not None:
            await stop_grpc_server(self.grpc_server, 1.0)
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        await self.placement.stop()


def main() -> None:
    def make(settings: ParleySettings, bus: Bus) -> Service:
        return Gateway(settings, bus)

    run("gateway", lambda settings: settings.gateway.metrics_port, make)
