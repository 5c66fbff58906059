"""The Xiaozhi firmware's OTA / activation check at /xiaozhi/ota/: the board
POSTs its system info at boot and learns the time, whether new firmware exists
(never, here) and where the WebSocket is. Served on the gateway's plain HTTP
port, since the WebSocket server speaks only GET."""

from __future__ import annotations

import logging
import ssl
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from parley import json_input
from parley.config import ParleySettings
from parley.logs import BoundedLog
from parley.metrics import ERRORS
from services.gateway.protocols.endpoint import (
    boards_need_allowlist,
    device_secret,
    device_token,
)

log = logging.getLogger("parley.gateway.xiaozhi")

OTA_PATHS = ("/xiaozhi/ota/", "/xiaozhi/ota")


def _error(status: int, message: str) -> web.Response:
    ERRORS.labels("gateway", "ota_refused").inc()
    return web.json_response({"error": message}, status=status)


def _timezone_offset_min(name: str) -> int:
    try:
        offset = datetime.now(ZoneInfo(name)).utcoffset()
    except ZoneInfoNotFoundError:
        return 0
    return int(offset.total_seconds() // 60) if offset else 0


def _short(value: str, limit: int = 64) -> str:
    return value if len(value) <= limit else value[:limit] + "..."


class OtaHandler:
    def __init__(self, settings: ParleySettings, ws_port: int) -> None:
        self.settings = settings
        self.cfg = settings.gateway.xiaozhi
        self.ws_port = ws_port
        self.secret = device_secret(settings)
        self.checks = BoundedLog(log)
        self.need_allowlist = boards_need_allowlist(settings)

    async def __call__(self, request: web.Request) -> web.Response:
        device_id = request.headers.get("Device-Id") or request.query.get("device-id", "")
        if not device_id:
            return _error(400, "missing Device-Id header")
        allow = self.cfg.device_allowlist
        if allow is not None and device_id not in allow:
            return _error(403, f"device {device_id} is not allowed on this server")
        if allow is None and self.need_allowlist:
            return _error(
                403,
                "this server is reachable from other machines: list your boards in "
                "gateway.xiaozhi.device_allowlist",
            )
        info: dict[str, Any] = {}
        if request.can_read_body:
            try:
                raw = await request.read()
            except ConnectionResetError:
                # The client left before its body arrived (a Content-Length
                # it never sent): nobody to answer, nothing to log a traceback
                # for (aiohttp did, per request; found by tests/fuzz/test_ota.py).
                raise web.HTTPBadRequest(text="the body ended early") from None
            if raw.strip():
                try:
                    parsed = json_input.loads(raw)
                except json_input.BadJson as exc:
                    return _error(400, f"the body is not JSON: {exc}")
                if not isinstance(parsed, dict):
                    return _error(400, "the body must be a JSON object")
                info = parsed
        application = info.get("application")
        version = "0.0.0"
        if isinstance(application, dict) and isinstance(application.get("version"), str):
            version = application["version"]
        # At a bounded rate, each field cut short: every field here is the
        # client's, and 2,164 checks of long headers wrote 1.9 MB of log
        # (tests/fuzz/test_ota.py). A board checks once a boot.
        self.checks.info(
            "OTA check from %s (client %s, firmware %s, activation v%s)",
            _short(device_id),
            _short(request.headers.get("Client-Id", "-")),
            _short(version),
            _short(request.headers.get("Activation-Version", "1")),
        )
        return web.json_response(
            {
                "server_time": {
                    "timestamp": int(time.time() * 1000),
                    "timezone_offset": _timezone_offset_min(self.settings.tools.timezone),
                },
                # The board's own version: nothing newer to install.
                "firmware": {"version": version, "url": ""},
                "websocket": {
                    "url": self._websocket_url(request),
                    # This board's own token, never a shared one: a token
                    # read off one board opens no other board's session.
                    "token": (
                        device_token(self.secret, "xiaozhi", device_id) if self.secret else ""
                    ),
                    "version": self.cfg.protocol_version,
                },
            }
        )

    def _websocket_url(self, request: web.Request) -> str:
        if self.cfg.websocket_url:
            return self.cfg.websocket_url
        host = (request.host or "127.0.0.1").rsplit(":", 1)[0]
        return f"ws://{host}:{self.ws_port}/xiaozhi/v1/"


class _MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a bad chunk size, a header
    that is not latin-1...) as an ERROR with its traceback, one per request
    (found by tests/fuzz/test_ota.py): a one-line warning at a bounded rate
    instead. The client got its 400 already."""

    def __init__(self) -> None:
        super().__init__()
        self.bounded = BoundedLog(log)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self.bounded.warning("malformed HTTP request: %s", " ".join(str(exc).split())[:200])
            return False
        return True


_HTTP_LOG = logging.getLogger("parley.gateway.http")
_HTTP_LOG.addFilter(_MalformedRequests())


async def start_http_server(
    settings: ParleySettings, ws_port: int, tls: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """The plain HTTP side of the gateway; (runner, bound port)."""
    app = web.Application(client_max_size=64 * 1024)
    handler = OtaHandler(settings, ws_port)
    for path in OTA_PATHS:
        app.router.add_route("POST", path, handler.__call__)
        app.router.add_route("GET", path, handler.__call__)
    runner = web.AppRunner(app, access_log=None, logger=_HTTP_LOG)
    await runner.setup()
    g = settings.gateway
    site = web.TCPSite(runner, g.host, g.http_port, ssl_context=tls)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only here
    port = int(server.sockets[0].getsockname()[1]) if server and server.sockets else g.http_port  # type: ignore[attr-defined]
    return runner, port
