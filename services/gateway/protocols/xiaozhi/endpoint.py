"""The Xiaozhi ESP32 firmware's WebSocket protocol at /xiaozhi/v1/ (docs/xiaozhi.md).

A board connects with Authorization, Protocol-Version, Device-Id and Client-Id
headers (or the same as query parameters, for browser clients), says hello,
streams Opus, and hears Opus back with stt / llm / tts messages around it
(connection.py reads the board, sink.py writes to it). Its own MCP server
becomes the session's client tools (mcp.py)."""

from __future__ import annotations

import http

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from parley.config import ParleySettings
from services.gateway.protocols.endpoint import (
    GatewayHost,
    device_secret,
    device_token,
    refuse,
    token_matches,
)
from services.gateway.protocols.xiaozhi import framing
from services.gateway.protocols.xiaozhi.connection import XiaozhiConnection
from services.gateway.protocols.xiaozhi.hello import DeviceInfo

XIAOZHI_PATH = "/xiaozhi/v1"


class XiaozhiEndpoint:
    name = "xiaozhi"

    def __init__(self, settings: ParleySettings) -> None:
        self.cfg = settings.gateway.xiaozhi
        self.secret = device_secret(settings)

    def matches(self, path: str) -> bool:
        return path.rstrip("/") == XIAOZHI_PATH

    def token_ok(self, info: DeviceInfo) -> bool:
        """This board's own token (what the OTA gave it), or the hand-set
        shared xiaozhi.auth_token; nothing asked when neither is configured."""
        if self.secret is None and not self.cfg.auth_token:
            return True
        if self.secret is not None and token_matches(
            info.token, device_token(self.secret, "xiaozhi", info.device_id)
        ):
            return True
        return bool(self.cfg.auth_token) and token_matches(info.token, self.cfg.auth_token or "")

    def authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        info = DeviceInfo.from_request(request)
        cfg = self.cfg
        if not info.device_id:
            return refuse(connection, http.HTTPStatus.BAD_REQUEST, "missing Device-Id")
        if not self.token_ok(info):
            return refuse(connection, http.HTTPStatus.UNAUTHORIZED, "missing or wrong token")
        if info.version not in framing.VERSIONS:
            return refuse(
                connection,
                http.HTTPStatus.BAD_REQUEST,
                f"Protocol-Version must be one of {framing.VERSIONS}",
            )
        if cfg.device_allowlist is not None and info.device_id not in cfg.device_allowlist:
            return refuse(connection, http.HTTPStatus.FORBIDDEN, "device not allowed")
        return None

    async def serve(self, gateway: GatewayHost, ws: ServerConnection) -> None:
        assert ws.request is not None
        device = DeviceInfo.from_request(ws.request)
        await XiaozhiConnection(gateway, ws, device, self.cfg).run()
