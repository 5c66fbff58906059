"""The skeleton of the HTTP stand-ins for paid OpenAI-compatible endpoints
(openai_chat_stub.py, openai_audio_stub.py): a real aiohttp server on a free
loopback port, its `base_url` as a client is configured with, and the JSON
error OpenAI answers a failed request with."""

from __future__ import annotations

import asyncio
from typing import Self

from aiohttp import web


class LoopbackServer:
    """Subclasses name their endpoints in routes(); `async with` serves them."""

    base_url: str = ""

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        # Set on exit, so requests told to hang let go and the server can stop.
        self.closing = asyncio.Event()
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.closing.set()
        await self._runner.cleanup()


def error_response(status: int) -> web.Response:
    """A failed request as OpenAI answers it."""
    return web.json_response(
        {"error": {"message": "scripted failure", "type": "server_error", "code": None}},
        status=status,
    )
