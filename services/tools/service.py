"""The tools service: tools.list and tools.call, request/reply on the queue
group `tools`. Not placed: any instance answers any session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Iterator

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context as otel_context
from opentelemetry import trace

from parley.bus import (
    CLIENT_TOOLS_CALL,
    CLIENT_TOOLS_LIST,
    TOOLS_CALL,
    TOOLS_LIST,
    Bus,
    session_subject,
)
from parley.config import ParleySettings
from parley.logs import session_id_var
from parley.metrics import ERRORS, STAGE_SECONDS
from parley.service import Stage
from parley.tracing import extract_context
from parley.v1 import tools_pb2
from services.tools.builtin import builtin_registry
from services.tools.mcp_hub import McpHub
from services.tools.registry import ToolError

log = logging.getLogger("parley.tools")
tracer = trace.get_tracer("parley.tools")

QUEUE = "tools"
# The gateway answers for its session's client tools at once or not at all.
CLIENT_LIST_TIMEOUT_S = 1.0


def _parse(msg: Message, raw: Msg) -> str | None:
    """Fill msg from raw; the reason it cannot be read, or None."""
    try:
        msg.ParseFromString(raw.data)
    except (DecodeError, ValueError) as exc:
        ERRORS.labels("tools", "bad_bus_message").inc()
        log.warning("malformed request on %s: %s", raw.subject, exc)
        return f"{exc}" or "cannot decode"
    return None


@contextlib.contextmanager
def _request_context(raw: Msg, session_id: str) -> Iterator[None]:
    """The caller's trace and session, for spans and log lines."""
    token = otel_context.attach(extract_context(raw.headers))
    session_token = session_id_var.set(session_id or "-")
    try:
        yield
    finally:
        session_id_var.reset(session_token)
        otel_context.detach(token)


class ToolsStage(Stage):
    name = "tools"

    def __init__(self, settings: ParleySettings, bus: Bus) -> None:
        super().__init__(settings, bus)
        self._subscriptions: list[Subscription] = []
        self._calls: set[asyncio.Task[None]] = set()

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
        # Raw subscriptions rather than Bus.subscribe: a request that cannot be
        # decoded still gets a reply, so the caller learns why instead of
        # waiting for its timeout.
        self._subscriptions = [
            await self.bus.nc.subscribe(TOOLS_LIST, queue=QUEUE, cb=self._on_list),
            await self.bus.nc.subscribe(TOOLS_CALL, queue=QUEUE, cb=self._on_call),
        ]

    async def close(self) -> None:
        """Stop taking requests (the queue group's other instances get them),
        let calls under way answer, then disconnect from MCP servers."""
        for sub in self._subscriptions:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subscriptions = []
        if self._calls:
            log.info("waiting for %d tool calls", len(self._calls))
            drain_s = self.stage_settings.drain_timeout_s
            _, late = await asyncio.wait(set(self._calls), timeout=drain_s)
            for task in late:
                task.cancel()
        await self.hub.stop()

    async def _on_list(self, raw: Msg) -> None:
        request = tools_pb2.ToolListRequest()
        # The listing depends on nothing in the request: answer even garbage.
        _parse(request, raw)
        with _request_context(raw, request.session_id):
            reply = tools_pb2.ToolListReply()
            for tool in self.registry.describe():
                reply.tools.add(
                    name=tool.name,
                    description=tool.description,
                    parameters_json=json.dumps(tool.parameters),
                )
            taken = {t.name for t in reply.tools}
            for tool in await self._client_tools(request.session_id):
                if tool.name not in taken:
                    reply.tools.append(tool)
            await self.bus.reply(raw, reply)

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

    async def _on_call(self, raw: Msg) -> None:
        # nats-py runs one subscription's callbacks one after another: a slow
        # tool would hold up every other call (the llm makes them in parallel).
        task = asyncio.create_task(self._call(raw))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def _timeout(self, requested: float) -> float:
        """The caller's timeout, capped by ours; nonsense means ours."""
        limit = self.settings.tools.call_timeout_s
        if not math.isfinite(requested) or requested <= 0:
            return limit
        return min(requested, limit)

    async def _call(self, raw: Msg) -> None:
        request = tools_pb2.ToolCallRequest()
        problem = _parse(request, raw)
        if problem is not None:
            await self._reply(
                raw, tools_pb2.ToolCallReply(ok=False, error=f"malformed request: {problem}")
            )
            return
        with _request_context(raw, request.session_id):
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
            await self._reply(raw, reply)

    async def _reply(self, raw: Msg, reply: tools_pb2.ToolCallReply) -> None:
        if not raw.reply:
            return  # published, not requested: nobody to answer
        try:
            await self.bus.reply(raw, reply)
        except Exception as exc:  # the connection is gone; the caller times out
            log.warning("cannot reply to a tool call: %s", exc)
