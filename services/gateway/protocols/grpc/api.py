"""The gateway's gRPC server (docs/grpc.md): the Converse API (converse.py)
and the standard gRPC health service, with the watcher that keeps health in
step with the bus and draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from parley.v1 import gateway_pb2_grpc
from services.gateway.protocols.endpoint import GatewayHost
from services.gateway.protocols.grpc.converse import ConverseServicer

log = logging.getLogger("parley.gateway.grpc")

SERVICE_NAME = "parley.v1.Gateway"
HEALTH_POLL_S = 0.25


class GrpcServer:
    """The grpc.aio server with Converse and health, and its health watcher."""

    def __init__(self, gateway: GatewayHost) -> None:
        self.gateway = gateway
        self.server = grpc.aio.server(
            options=[
                # Never share the port with another process by accident.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", gateway.settings.gateway.max_message_bytes),
            ]
        )
        self.health = HealthServicer()
        gateway_pb2_grpc.add_GatewayServicer_to_server(ConverseServicer(gateway), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            g = self.gateway.settings.gateway
            if g.tls_cert:
                # The same certificate as the WebSocket port (gateway.tls_cert).
                cert = await asyncio.to_thread(Path(g.tls_cert).read_bytes)
                key = await asyncio.to_thread(Path(g.tls_key or g.tls_cert).read_bytes)
                credentials = grpc.ssl_server_credentials([(key, cert)])
                bound = self.server.add_secure_port(address, credentials)
            else:
                bound = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's word for a port in use
            bound = 0
        if not bound:
            raise OSError(f"cannot bind the gRPC port {address} (in use?); set gateway.grpc_port")
        await self.server.start()
        await self._set(False)
        self._watcher = asyncio.create_task(self._watch())
        return int(bound)

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # "" is the whole server, as probes ask by default.
        for name in ("", "parley.gateway", SERVICE_NAME):
            await self.health.set(name, status)

    async def _watch(self) -> None:
        """SERVING while the bus is connected and the gateway not draining."""
        serving: bool | None = None
        while True:
            now = self.gateway.sessions.bus.connected and not self.gateway.draining
            if now != serving:
                await self._set(now)
                serving = now
                log.info("gRPC health: %s", "SERVING" if now else "NOT_SERVING")
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace_s: float) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.health.enter_graceful_shutdown()
        # Streams still open after the grace period are cancelled; the
        # gateway is draining then, so each closes its session on the way out.
        await self.server.stop(grace_s)


async def start_grpc_server(gateway: GatewayHost, host: str, port: int) -> tuple[GrpcServer, int]:
    """Serve Converse and health on host:port; (server, bound port)."""
    server = GrpcServer(gateway)
    bound = await server.start(host, port)
    return server, bound


async def stop_grpc_server(server: GrpcServer, grace_s: float) -> None:
    await server.stop(grace_s)
