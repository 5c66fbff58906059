"""The stand-in for a remote, paid OpenAI-compatible chat model, for every
test that needs one (provider unit tests and scripted-LLM stacks alike): a
real aiohttp server on loopback that streams scripted answers (text and tool
calls) as server-sent events in the exact chunk shape OpenAI sends, and
records what it was sent and whether the client hung up mid-answer.

More endpoints: subclass and extend routes()."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback_server import LoopbackServer, error_response


@dataclass
class Raw:
    """A script item written to the stream as is (a malformed chunk, an SSE
    comment), followed by a blank line."""

    text: str


# A script item: a piece of text (a content delta), a raw delta dict (tool-call
# deltas: {"tool_calls": [...]}), or Raw text.
ScriptItem = str | dict[str, Any] | Raw


@dataclass
class ChatReply:
    """How to answer one request."""

    script: list[ScriptItem] = field(default_factory=lambda: ["Hello", " there."])
    delay_s: float = 0.0  # between chunks
    status: int = 200  # >= 400: an OpenAI-shaped JSON error instead of a stream
    hang: bool = False  # never answer (until the client gives up or the stub closes)
    finish_reason: str | None = "stop"  # None: no finish chunk
    done: bool = True  # send "data: [DONE]"
    # OpenAI opens with a delta that has the role and empty content.
    role_chunk: bool = True


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    json: dict[str, Any]


@dataclass
class OpenAIChatStub(LoopbackServer):
    """The default reply answers every request; replies queued in `replies`
    are used up first, one per request."""

    script: list[ScriptItem] = field(default_factory=lambda: ["Hello", " there."])
    delay_s: float = 0.0
    fail_status: int | None = None
    hang: bool = False
    replies: list[ChatReply] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    # Set when a client hangs up before its answer was complete, and when an
    # answer was sent to the end; a test clears them before what it watches.
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected_at: float | None = None
    chunks_sent: int = 0
    # Computes the answer from the request body instead of the script (e.g.
    # one that counts the user messages, to check a history survived).
    answer: Callable[[dict[str, Any]], list[ScriptItem]] | None = None

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/chat/completions", self._chat_completions)]

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [r.json for r in self.requests]

    def _next_reply(self, body: dict[str, Any]) -> ChatReply:
        if self.replies:
            return self.replies.pop(0)
        return ChatReply(
            script=self.answer(body) if self.answer is not None else self.script,
            delay_s=self.delay_s,
            status=self.fail_status or 200,
            hang=self.hang,
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(RecordedRequest(request.path, dict(request.headers), body))
        reply = self._next_reply(body)
        if reply.hang:
            await self._pause(request, float("inf"))
            return web.Response(status=504)
        if reply.status >= 400:
            return error_response(reply.status)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        model = body.get("model", "stub")
        try:
            if reply.role_chunk:
                await response.write(_data(_chunk(model, {"role": "assistant", "content": ""})))
            for item in reply.script:
                await response.write(_event(item, model))
                self.chunks_sent += 1
                if not await self._pause(request, reply.delay_s):
                    return response
            if reply.finish_reason is not None:
                await response.write(_data(_chunk(model, {}, reply.finish_reason)))
            if reply.done:
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            self.finished.set()
        except (ConnectionResetError, asyncio.CancelledError):
            self._hung_up()
            raise
        return response

    async def _pause(self, request: web.Request, seconds: float) -> bool:
        """Wait, watching the connection: False when the client hung up (or
        the stub is closing) meanwhile. Yields even for no time, so chunks go
        out one by one."""
        until = time.monotonic() + seconds
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                self._hung_up()
                return False
            if self.closing.is_set():
                return False
            left = until - time.monotonic()
            if left <= 0:
                await asyncio.sleep(0)
                return True
            await asyncio.sleep(min(left, 0.01))

    def _hung_up(self) -> None:
        if not self.disconnected.is_set():
            self.disconnected_at = time.monotonic()
            self.disconnected.set()


def _chunk(model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _data(chunk: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _event(item: ScriptItem, model: str) -> bytes:
    if isinstance(item, Raw):
        return f"{item.text}\n\n".encode()
    return _data(_chunk(model, {"content": item} if isinstance(item, str) else item))


def tool_call_deltas(calls: list[tuple[str, str, str]]) -> list[ScriptItem]:
    """Streamed tool-call deltas as OpenAI sends them: id and name first, then
    the arguments JSON in two fragments. calls: (id, name, arguments JSON)."""
    out: list[ScriptItem] = []
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


def count_user_messages(body: dict[str, Any]) -> list[ScriptItem]:
    """An answer that says how many user messages the model was given: the
    history's length, readable in the answer text."""
    users = sum(1 for m in body.get("messages", []) if m.get("role") == "user")
    return [f"You have asked {users} questions."]
