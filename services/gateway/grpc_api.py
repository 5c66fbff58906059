"""The gRPC Converse API and the standard gRPC health service."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.gateway.service import Gateway


async def start_grpc_server(gateway: Gateway, host: str, port: int) -> tuple[Any, int]:
    """Serve Converse and health on host:port; (server, bound port)."""
    return None, 0


async def stop_grpc_server(server: Any, grace_s: float) -> None:
    return None
