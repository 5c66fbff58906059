"""The functions a Realtime client declares (session.tools), offered to
Parley's LLM as client tools: a call becomes a function_call item sent to the
client, and the client's function_call_output is the tool's result."""

from __future__ import annotations

from parley.v1 import tools_pb2
from services.gateway.realtime_conversation import RealtimeConversation


class RealtimeTools:
    """ClientTools (services/gateway/session.py) for one Realtime connection."""

    def __init__(self, conversation: RealtimeConversation) -> None:
        self.conversation = conversation

    def list_tools(self) -> list[tools_pb2.Tool]:
        return self.conversation.config.tool_protos()

    async def call_tool(self, name: str, arguments_json: str, timeout_s: float) -> str:
        # The session bounds the wait by timeout_s; it raises ClientToolError
        # if the response is cancelled meanwhile.
        conv = self.conversation
        async with conv.lock:
            call_id, future = await conv.function_call(name, arguments_json or "{}")
        try:
            return await future
        finally:
            conv.calls.pop(call_id, None)
            if not future.done():
                future.cancel()
