"""The tools service: tools.list and tools.call, request/reply on the queue
group `tools`. Not placed: any instance answers any session."""

from __future__ import annotations

import json
import logging
import math

from opentelemetry import trace

from parley.bus import (
    CLIENT_TOOLS_CALL,
    CLIENT_TOOLS_LIST,
    TOOLS_CALL,
    TOOLS_LIST,
    Bus,
    Subscriptions,
    session_subject,
)
from parley.config import ParleySettings
from parley.metrics import ERRORS, STAGE_SECONDS
from parley.service import Stage
from parley.tasks import TaskSet
from parley.tool_policy import allowed, refusal
from parley.v1 import tools_pb2
from services.tools.builtin import builtin_registry
from services.tools.mcp_hub import McpHub
from services.tools.registry import ToolError

log = logging.getLogger("parley.tools")
tracer = trace.get_tracer("parley.tools")

QUEUE = "tools"
# The gateway answers for its session's client tools at once or not at all.
CLIENT_LIST_TIMEOUT_S = 1.0


class ToolsStage(Stage):
    name = "tools"

    def __init__(self, settings: ParleySettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self._subscriptions = Subscriptions()
        self._calls = TaskSet("tool call", "tools")

    async def load(self) -> None:
        cfg = self.settings.tools
        try:
            self.registry = builtin_registry(cfg.timezone)
        except ToolError as exc:
            log.error("tools.timezone: %s", exc)
            raise SystemExit(2) from None
        self.hub = McpHub(cfg.mcp_servers, cfg.mcp_ping_interval_s)
        self.registry.add_source(self.hub.tools)
        await self.hub.start()

    async def start(self) -> None:
        self._subscriptions.add(
            await self.bus.serve(
                TOOLS_LIST,
                tools_pb2.ToolListRequest,
                self._list,
                # The listing depends on nothing in the request: answer even garbage.
                bad_request=lambda _why: self._listing(),
                queue=QUEUE,
            ),
            await self.bus.serve(
                TOOLS_CALL,
                tools_pb2.ToolCallRequest,
                self._call,
                bad_request=lambda why: tools_pb2.ToolCallReply(ok=False, error=why),
                queue=QUEUE,
                tasks=self._calls,
            ),
        )

    async def close(self) -> None:
        """Stop taking requests (the queue group's other instances get them),
        let calls under way answer, then disconnect from MCP servers."""
        await self._subscriptions.close()
        if len(self._calls):
            log.info("waiting for %d tool calls", len(self._calls))
            await self._calls.wait(self.stage_settings.drain_timeout_s)
        await self.hub.stop()

    def _listing(self) -> tools_pb2.ToolListReply:
        reply = tools_pb2.ToolListReply()
        for tool in self.registry.describe():
            reply.tools.add(
                name=tool.name,
                description=tool.description,
                parameters_json=json.dumps(tool.parameters),
            )
        return reply

    async def _list(self, request: tools_pb2.ToolListRequest) -> tools_pb2.ToolListReply:
        listing = self._listing()
        taken = {t.name for t in listing.tools}
        for tool in await self._client_tools(request.session_id):
            if tool.name not in taken:
                listing.tools.append(tool)
        # What would be refused is not offered.
        allow = self.settings.tools.allow
        reply = tools_pb2.ToolListReply()
        reply.tools.extend(t for t in listing.tools if allowed(t.name, allow))
        return reply

    async def _client_tools(self, session_id: str) -> list[tools_pb2.Tool]:
        """The tools the session's client brought (a device's MCP server, a
        Realtime client's functions), asked of the gateway holding it."""
        if not session_id:
            return []
        try:
            reply = await self.bus.request(
                session_subject(session_id, CLIENT_TOOLS_LIST),
                tools_pb2.ToolListRequest(session_id=session_id),
                tools_pb2.ToolListReply,
                timeout=CLIENT_LIST_TIMEOUT_S,
            )
        except Exception as exc:  # no gateway session (a test, a closed one)
            log.debug("no client tools for the session: %s", exc)
            return []
        return list(reply.tools)

    async def _relay_to_client(self, request: tools_pb2.ToolCallRequest, timeout: float) -> str:
        """A tool the registry does not know may be the client's: the gateway
        holding the session runs it there."""
        if not request.session_id:
            raise ToolError(f"unknown tool: {request.name}")
        try:
            reply = await self.bus.request(
                session_subject(request.session_id, CLIENT_TOOLS_CALL),
                request,
                tools_pb2.ToolCallReply,
                timeout=timeout,
            )
        except TimeoutError:
            raise ToolError(f"tool {request.name} timed out after {timeout:g} s") from None
        except Exception as exc:  # no gateway holds the session: nobody has the tool
            log.debug("no client to relay %s to: %s", request.name, exc)
            raise ToolError(f"unknown tool: {request.name}") from None
        if not reply.ok:
            raise ToolError(reply.error or f"tool {request.name} failed")
        return reply.content

    def _timeout(self, requested: float) -> float:
        """The caller's timeout, capped by ours; nonsense means ours."""
        limit = self.settings.tools.call_timeout_s
        if not math.isfinite(requested) or requested <= 0:
            return limit
        return min(requested, limit)

    async def _call(self, request: tools_pb2.ToolCallRequest) -> tools_pb2.ToolCallReply:
        # Each call is its own task (Bus.serve with tasks): the llm makes them
        # in parallel, and a slow tool must not hold up the others.
        reply = tools_pb2.ToolCallReply(call_id=request.call_id)
        with (
            tracer.start_as_current_span(
                "tools.call",
                attributes={
                    "parley.session_id": request.session_id,
                    "parley.tool": request.name,
                },
            ) as span,
            STAGE_SECONDS.labels("tools", "call").time(),
        ):
            timeout = self._timeout(request.timeout_s)
            try:
                if not allowed(request.name, self.settings.tools.allow):
                    # Whoever asked (anything that may publish tools.call).
                    ERRORS.labels("tools", "tool_refused").inc()
                    log.warning("tool call refused: %s is not in tools.allow", request.name)
                    raise ToolError(refusal(request.name))
                if request.name in self.registry.all():
                    reply.content = await self.registry.call(
                        request.name, request.arguments_json, timeout
                    )
                else:
                    reply.content = await self._relay_to_client(request, timeout)
                reply.ok = True
            except ToolError as exc:
                ERRORS.labels("tools", "tool_failed").inc()
                log.info("tool call failed: %s", exc)
                reply.error = str(exc)
            except Exception as exc:  # a bug of ours: still an answer, never silence
                ERRORS.labels("tools", "tool_failed").inc()
                log.exception("tool call %s crashed", request.name)
                reply.error = f"tool {request.name} failed: {exc or type(exc).__name__}"
            if not reply.ok:
                span.set_status(trace.StatusCode.ERROR, reply.error)
        return reply
