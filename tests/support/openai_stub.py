"""A stand-in for a remote, paid OpenAI-compatible chat model: a real HTTP
server on loopback that streams scripted chat deltas (text and tool calls) as
server-sent events, recording every request it gets. The audio endpoints have
their own stand-in, tests/support/openai_audio_stub.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class OpenAIStub:
    # Each item: a text piece, or a raw `delta` dict (tool-call deltas later).
    chat_script: list[str | dict[str, Any]] = field(default_factory=lambda: ["Hello", " there."])
    chat_delay_s: float = 0.0
    # Scripts for the next requests, used up one per request before chat_script.
    chat_queue: list[list[str | dict[str, Any]]] = field(default_factory=list)
    fail_status: int | None = None
    hang: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    chat_disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    chat_finished: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""

    async def __aenter__(self) -> OpenAIStub:
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._released.set()
        await self._runner.cleanup()

    async def _maybe_fail(self) -> web.Response | None:
        if self.hang:
            await self._released.wait()
        if self.fail_status is not None:
            return web.json_response(
                {"error": {"message": "scripted failure"}}, status=self.fail_status
            )
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(
            {"path": request.path, "json": body, "auth": request.headers.get("Authorization")}
        )
        failure = await self._maybe_fail()
        if failure is not None:
            return failure
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            script = self.chat_queue.pop(0) if self.chat_queue else self.chat_script
            for item in script:
                delta = {"content": item} if isinstance(item, str) else item
                chunk = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "model": body.get("model", "stub"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                if self.chat_delay_s:
                    await asyncio.sleep(self.chat_delay_s)
            last = {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            await response.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
            self.chat_finished.set()
        except (ConnectionResetError, asyncio.CancelledError):
            self.chat_disconnected.set()
            raise
        return response


def tool_call_deltas(calls: list[tuple[str, str, str]]) -> list[str | dict[str, Any]]:
    """Streamed tool-call deltas as OpenAI sends them: id and name first, then
    the arguments JSON in two fragments. calls: (id, name, arguments JSON)."""
    out: list[str | dict[str, Any]] = []
    for index, (call_id, name, arguments) in enumerate(calls):
        half = len(arguments) // 2
        out.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
        )
        out.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[:half]}}]})
        out.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]})
    return out
