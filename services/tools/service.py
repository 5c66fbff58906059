"""The tools service: tools.list and tools.call, request/reply on the queue
group `tools`. Not placed: any instance answers any session."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import trace

from parley.bus import TOOLS_CALL, TOOLS_LIST
from parley.metrics import ERRORS, STAGE_SECONDS
from parley.service import Stage
from parley.session import StageSession
from parley.tracing import extract_context
from parley.v1 import common_pb2, tools_pb2
from services.tools.builtin import builtin_registry
from services.tools.mcp_hub import McpHub
from services.tools.registry import ToolError

log = logging.getLogger("parley.tools")
tracer = trace.get_tracer("parley.tools")


class ToolsStage(Stage):
    name = "tools"

    async def load(self) -> None:
        cfg = self.settings.tools
        self.registry = builtin_registry(cfg.timezone)
        self.hub = McpHub(cfg.mcp_servers, cfg.mcp_ping_interval_s)
        self.registry.add_source(self.hub.tools)
        await self.hub.start()

    async def close(self) -> None:
        await self.hub.stop()

    async def start(self) -> None:
        # Raw subscriptions: a request that cannot be decoded still gets a reply,
        # so the caller learns why instead of waiting for a timeout.
        await self.bus.nc.subscribe(TOOLS_LIST, queue="tools", cb=self._on_list)
        await self.bus.nc.subscribe(TOOLS_CALL, queue="tools", cb=self._on_call)

    async def _on_list(self, raw: Msg) -> None:
        reply = tools_pb2.ToolListReply()
        for tool in self.registry.describe():
            reply.tools.add(
                name=tool.name,
                description=tool.description,
                parameters_json=json.dumps(tool.parameters),
            )
        await self.bus.reply(raw, reply)

    async def _on_call(self, raw: Msg) -> None:
        request = tools_pb2.ToolCallRequest()
        try:
            request.ParseFromString(raw.data)
        except DecodeError as exc:
            ERRORS.labels("tools", "bad_bus_message").inc()
            await self.bus.reply(
                raw, tools_pb2.ToolCallReply(ok=False, error=f"malformed request: {exc}")
            )
            return
        token = otel_context.attach(extract_context(raw.headers))
        try:
            with (
                tracer.start_as_current_span(
                    "tools.call",
                    attributes={
                        "parley.session_id": request.session_id,
                        "parley.tool": request.name,
                    },
                ),
                STAGE_SECONDS.labels("tools", "call").time(),
            ):
                timeout = request.timeout_s or self.settings.tools.call_timeout_s
                timeout = min(timeout, self.settings.tools.call_timeout_s)
                try:
                    content = await self.registry.call(
                        request.name, request.arguments_json, timeout
                    )
                    reply = tools_pb2.ToolCallReply(
                        call_id=request.call_id, ok=True, content=content
                    )
                except ToolError as exc:
                    ERRORS.labels("tools", "tool_failed").inc()
                    log.info("tool call failed: %s", exc)
                    reply = tools_pb2.ToolCallReply(
                        call_id=request.call_id, ok=False, error=str(exc)
                    )
            await self.bus.reply(raw, reply)
        finally:
            otel_context.detach(token)

    def open_session(
        self,
        session_id: str,
        settings: common_pb2.Settings,
        on_closed: Callable[[str], Awaitable[None]],
    ) -> StageSession:
        raise NotImplementedError("the tools service is not placed per session")
