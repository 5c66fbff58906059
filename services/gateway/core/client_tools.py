"""Tools the client brings to its session (a device's MCP server, a Realtime
client's functions). The tools service offers them beside its own and relays
their calls to the gateway holding the session, over request/reply."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from nats.aio.subscription import Subscription

from parley.bus import CLIENT_TOOLS_CALL, CLIENT_TOOLS_LIST, Bus, session_subject
from parley.tasks import TaskSet
from parley.v1 import tools_pb2
from services.gateway.core.errors import ClientToolError

log = logging.getLogger("parley.gateway")

DEFAULT_TIMEOUT_S = 10.0


class ClientTools(Protocol):
    """call_tool raises ClientToolError."""

    def list_tools(self) -> list[tools_pb2.Tool]: ...

    async def call_tool(self, name: str, arguments_json: str, timeout_s: float) -> str: ...


class ClientToolRelay:
    """Answers the tools service's list and call requests for one session."""

    def __init__(self, bus: Bus, session_id: str) -> None:
        self.bus = bus
        self.session_id = session_id
        self.tools: ClientTools | None = None
        # Each call its own task: a device may take seconds, and parallel
        # calls must not queue behind each other.
        self._calls = TaskSet("client tool call")

    async def subscribe(self) -> list[Subscription]:
        return [
            await self.bus.serve(
                session_subject(self.session_id, CLIENT_TOOLS_LIST),
                tools_pb2.ToolListRequest,
                self._list,
                bad_request=lambda _why: self._listing(),
            ),
            await self.bus.serve(
                session_subject(self.session_id, CLIENT_TOOLS_CALL),
                tools_pb2.ToolCallRequest,
                self._call,
                bad_request=lambda why: tools_pb2.ToolCallReply(ok=False, error=why),
                tasks=self._calls,
            ),
        ]

    def _listing(self) -> tools_pb2.ToolListReply:
        reply = tools_pb2.ToolListReply()
        if self.tools is not None:
            reply.tools.extend(self.tools.list_tools())
        return reply

    async def _list(self, _request: tools_pb2.ToolListRequest) -> tools_pb2.ToolListReply:
        return self._listing()

    async def _call(self, request: tools_pb2.ToolCallRequest) -> tools_pb2.ToolCallReply:
        reply = tools_pb2.ToolCallReply(call_id=request.call_id)
        try:
            if self.tools is None:
                raise ClientToolError(f"unknown tool: {request.name}")
            timeout = request.timeout_s if request.timeout_s > 0 else DEFAULT_TIMEOUT_S
            async with asyncio.timeout(timeout):
                reply.content = await self.tools.call_tool(
                    request.name, request.arguments_json, timeout
                )
            reply.ok = True
        except ClientToolError as exc:
            reply.error = str(exc)
        except TimeoutError:
            reply.error = f"the client did not answer the call of {request.name} in time"
        except Exception as exc:
            log.exception("client tool call failed")
            reply.error = f"tool {request.name} failed: {exc or type(exc).__name__}"
        return reply

    def close(self) -> None:
        self._calls.cancel_all()
