"""The standard gRPC health service, which Kubernetes probes natively."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer


class HealthServer:
    def __init__(self, service: str) -> None:
        self.service = service
        self._servicer = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, port: int, host: str = "127.0.0.1") -> int:
        self._server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        await self._server.start()
        await self.set_serving(False)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        # "" is the whole server, as probes ask by default.
        await self._servicer.set("", status)
        await self._servicer.set(f"parley.{self.service}", status)

    async def stop(self) -> None:
        if self._server is not None:
            await self._servicer.enter_graceful_shutdown()
            await self._server.stop(grace=1.0)
