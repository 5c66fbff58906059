"""The functions a Realtime client declares (session.tools), offered to
Parley's LLM as client tools: a call becomes a function_call item sent to the
client, and the client's function_call_output is the tool's result."""

from __future__ import annotations

import asyncio

from parley.v1 import tools_pb2
from services.gateway.core.errors import ClientToolError
from services.gateway.protocols.realtime.responses import Responses
from services.gateway.protocols.realtime.server_events import ServerEvents


class RealtimeTools:
    """ClientTools (core/client_tools.py) for one Realtime connection."""

    def __init__(self, out: ServerEvents, responses: Responses) -> None:
        self.out = out
        self.responses = responses
        # call_id -> (the client's output, the Parley response that called it)
        self.waiting: dict[str, tuple[asyncio.Future[str], str]] = {}

    def list_tools(self) -> list[tools_pb2.Tool]:
        return self.out.config.tool_protos()

    async def call_tool(self, name: str, arguments_json: str, timeout_s: float) -> str:
        # The session bounds the wait by timeout_s; fail() raises
        # ClientToolError here if the response is cancelled meanwhile.
        async with self.out.lock:
            call_id, rid = await self.responses.function_call(name, arguments_json or "{}")
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self.waiting[call_id] = (future, rid)
        try:
            return await future
        finally:
            self.waiting.pop(call_id, None)
            if not future.done():
                future.cancel()

    def is_waiting(self, call_id: str) -> bool:
        return call_id in self.waiting

    def answer(self, call_id: str, output: str) -> None:
        """The client's function_call_output."""
        waiting = self.waiting.get(call_id)
        if waiting is not None and not waiting[0].done():
            waiting[0].set_result(output)

    def fail(self, rid: str, why: str) -> None:
        """The calls of a cancelled response reach the model as failed."""
        for call_id, (future, call_rid) in list(self.waiting.items()):
            if call_rid == rid:
                del self.waiting[call_id]
                if not future.done():
                    future.set_exception(ClientToolError(why))
