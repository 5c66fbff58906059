"""The gateway process: WebSocket server, HTTP health endpoints, placement."""

from __future__ import annotations

import argparse
import asyncio
import http
import logging
import signal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from parley.bus import Bus
from parley.config import ParleySettings, load_settings_or_exit
from parley.logs import setup_logging
from parley.metrics import start_metrics_server
from parley.tracing import setup_tracing
from services.gateway.parley_ws import ParleyProtocol, WebSocketSink
from services.gateway.placement import PlacementClient
from services.gateway.session import GatewaySession

log = logging.getLogger("parley.gateway")

PARLEY_PATHS = ("/v1/ws", "/ws")


def bearer_token(headers: Headers, query: str) -> str | None:
    auth = headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    values = parse_qs(query).get("token")
    return values[0] if values else None


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
        return int(self.server.sockets[0].getsockname()[1])

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if url.path == "/readyz":
            if self.bus.connected and not self.draining:
                return connection.respond(http.HTTPStatus.OK, "ready\n")
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "not ready\n")
        if url.path not in PARLEY_PATHS:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"no endpoint at {url.path}\n")
        if self.draining:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
        token = self.settings.gateway.auth_token
        if token and bearer_token(request.headers, url.query) != token:
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def handle(self, ws: ServerConnection) -> None:
        sink = WebSocketSink(ws)
        session = GatewaySession(self.bus, self.placement, self.settings, sink, "parley")
        self.sessions.add(session)
        try:
            failures = await session.open()
            await sink.send_event({"type": "session_started", **session.describe()})
            await session.report_placement(failures)
            protocol = ParleyProtocol(ws, session, self.settings.gateway.max_frame_bytes)
            await protocol.run()
        except Exception:
            log.exception("session failed")
        finally:
            await session.close()
            self.sessions.discard(session)

    async def drain(self) -> None:
        self.draining = True
        deadline = asyncio.get_running_loop().time() + self.settings.gateway.drain_timeout_s
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
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
    log.info("gateway ready: ws://%s:%d/v1/ws metrics=:%d", host, port, metrics_port)
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
