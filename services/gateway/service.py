"""The gateway process: WebSocket server, HTTP health endpoints, placement."""

from __future__ import annotations

import argparse
import asyncio
import http
import logging
import signal
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from parley.bus import Bus
from parley.config import ParleySettings, load_settings_or_exit
from parley.logs import setup_logging
from parley.metrics import start_metrics_server
from parley.tracing import setup_tracing
from parley.v1 import common_pb2
from services.gateway import web_page
from services.gateway.echokit import EchoKitEndpoint
from services.gateway.endpoints import WsEndpoint
from services.gateway.grpc_api import start_grpc_server, stop_grpc_server
from services.gateway.parley_ws import ParleyEndpoint
from services.gateway.placement import PlacementClient, PlacementError
from services.gateway.realtime import RealtimeEndpoint
from services.gateway.session import ClientSink, GatewaySession
from services.gateway.xiaozhi import XiaozhiEndpoint
from services.gateway.xiaozhi_ota import start_http_server

log = logging.getLogger("parley.gateway")


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
        self.sessions: set[GatewaySession] = set()
        self.draining = False
        self.server: Server | None = None
        self.endpoints = endpoints(settings)
        self.grpc_server: Any = None
        self.grpc_port = 0
        self.http_runner: Any = None
        self.http_port = 0

    async def start(self) -> int:
        await self.placement.start()
        g = self.settings.gateway
        self.server = await serve(
            self.handle,
            g.host,
            g.port,
            max_size=g.max_message_bytes,
            process_request=self.process_request,
        )
        port = int(self.server.sockets[0].getsockname()[1])
        self.grpc_server, self.grpc_port = await start_grpc_server(self, g.host, g.grpc_port)
        self.http_runner, self.http_port = await start_http_server(self.settings, port)
        return port

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
        return endpoint.authorize(connection, request)

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

    async def open_session(
        self, sink: ClientSink, protocol: str, settings: common_pb2.Settings | None = None
    ) -> tuple[GatewaySession, list[PlacementError]]:
        """A placed session, registered for draining; close it with close_session."""
        session = GatewaySession(self.bus, self.placement, self.settings, sink, protocol)
        self.sessions.add(session)
        try:
            failures = await session.open(settings)
        except BaseException:
            await self.close_session(session)
            raise
        return session, failures

    async def close_session(self, session: GatewaySession, reason: str = "client closed") -> None:
        try:
            await session.close(reason)
        finally:
            self.sessions.discard(session)

    async def drain(self) -> None:
        self.draining = True
        deadline = asyncio.get_running_loop().time() + self.settings.gateway.drain_timeout_s
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self.grpc_server is not None:
            await stop_grpc_server(self.grpc_server, 1.0)
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        await self.placement.stop()


async def run() -> None:
    parser = argparse.ArgumentParser(prog="parley-gateway")
    parser.add_argument("--config", help="TOML configuration file (default parley.toml)")
    args = parser.parse_args()
    settings = load_settings_or_exit(args.config)
    setup_logging("gateway", settings.log.level, settings.log.format)
    tracer_provider = setup_tracing("gateway", settings.telemetry)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics_port = start_metrics_server(settings.gateway.metrics_port)
    bus = await Bus.connect(settings.nats, "gateway")
    gateway = Gateway(settings, bus)
    port = await gateway.start()
    host = settings.gateway.host
    log.info(
        "gateway ready: ws://%s:%d/v1/ws http=:%d (xiaozhi OTA) grpc=:%d metrics=:%d",
        host,
        port,
        gateway.http_port,
        gateway.grpc_port,
        metrics_port,
    )
    await stop.wait()
    log.info("gateway draining")
    await gateway.drain()
    await bus.close()
    tracer_provider.shutdown()
    log.info("gateway stopped")


def main() -> None:
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
