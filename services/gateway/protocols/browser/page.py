"""The browser page, served from the package on the WebSocket port (GET /)."""

from __future__ import annotations

import email.utils
import functools
import http
import re
from pathlib import Path

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static/"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Names a request may ask for: one path segment, no dot-files, a known type.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\.[a-z]+$")
# The page needs nothing but its own files and its own WebSocket.
_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@functools.cache
def _files() -> dict[str, tuple[str, bytes]]:
    """name -> (content type, body) of every servable file, read once.

    Requests are answered from this table only, so no path a client sends
    ever reaches the filesystem."""
    files: dict[str, tuple[str, bytes]] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        kind = _CONTENT_TYPES.get(path.suffix)
        if kind and path.is_file() and _SAFE_NAME.match(path.name):
            files[path.name] = (kind, path.read_bytes())
    return files


def _response(status: http.HTTPStatus, content_type: str, body: bytes) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            # Small files, served from memory: always revalidate so an upgraded
            # gateway never runs an old page against a new protocol.
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", _CSP),
            ("Referrer-Policy", "no-referrer"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def respond(connection: ServerConnection, path: str) -> Response | None:
    """The page or one of its files for a plain GET, or None when path is not one."""
    if path in ("/", "/index.html"):
        name = "index.html"
    elif path.startswith(STATIC_PREFIX):
        name = path[len(STATIC_PREFIX) :]
    else:
        return None
    found = _files().get(name)
    if found is None:
        return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such file: {path}\n")
    content_type, body = found
    return _response(http.HTTPStatus.OK, content_type, body)
