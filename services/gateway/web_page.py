"""The browser page, served from the package on the WebSocket port (GET /)."""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response


def respond(connection: ServerConnection, path: str) -> Response | None:
    """The page or one of its files for a plain GET, or None when path is not one."""
    return None
