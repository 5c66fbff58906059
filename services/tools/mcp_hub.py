"""Connects to the MCP servers named in configuration (streamable HTTP, SSE or
stdio, through the official `mcp` SDK), keeps their tool lists current and
offers their tools to the registry. A server that goes away is reconnected
with backoff; its tools disappear meanwhile and come back with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters

from parley.config import McpServerSettings
from services.tools.registry import Tool, ToolError

log = logging.getLogger("parley.tools.mcp")

BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def _target(cfg: McpServerSettings) -> Any:
    if cfg.transport == "stdio":
        assert cfg.command is not None
        return StdioServerParameters(command=cfg.command, args=cfg.args, env=cfg.env or None)
    assert cfg.url is not None
    if cfg.transport == "sse":
        return sse_client(cfg.url)
    return cfg.url


def _text(result: Any) -> str:
    parts = []
    for block in result.content or []:
        text = getattr(block, "text", None)
        parts.append(text if text is not None else f"[{getattr(block, 'type', 'content')}]")
    return "\n".join(parts)


class McpConnection:
    """One MCP server: a task that stays connected and tracks its tools."""

    def __init__(self, cfg: McpServerSettings, on_change: Callable[[], None]) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self.client: Client | None = None
        self.tools: list[Any] = []
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, ping_interval_s: float) -> None:
        self._task = asyncio.create_task(self._run(ping_interval_s))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _on_message(self, message: Any) -> None:
        # Servers on the handshake-era protocol announce list changes as
        # notifications; the listen stream covers the newer protocol.
        name = type(getattr(message, "root", message)).__name__
        if "ToolListChanged" in name:
            self._changed.set()

    async def _run(self, ping_interval_s: float) -> None:
        attempt = 0
        while True:
            try:
                async with Client(
                    _target(self.cfg),
                    message_handler=self._on_message,
                    read_timeout_seconds=self.cfg.timeout_s,
                ) as client:
                    self.client = client
                    await self._refresh()
                    self.connected.set()
                    attempt = 0
                    log.info("mcp server %s connected: %d tools", self.cfg.name, len(self.tools))
                    await self._watch(client, ping_interval_s)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # anyio task groups raise exception groups
                log.warning("mcp server %s unavailable: %s", self.cfg.name, _reason(exc))
            self.client = None
            self.connected.clear()
            if self.tools:
                self.tools = []
                self.on_change()
            await asyncio.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
            attempt += 1

    async def _watch(self, client: Client, ping_interval_s: float) -> None:
        """Until the connection is lost: refresh on change and when idle."""
        listener = asyncio.create_task(self._listen(client))
        try:
            while True:
                self._lost.clear()
                self._changed.clear()
                waits = [asyncio.create_task(e.wait()) for e in (self._lost, self._changed)]
                _, pending = await asyncio.wait(waits, timeout=ping_interval_s)
                for task in pending:
                    task.cancel()
                if self._lost.is_set():
                    raise ConnectionError("a call found the connection broken")
                # On a change, and otherwise when idle: the listing doubles as
                # a liveness check (ping is gone from the newer protocol).
                await asyncio.wait_for(self._refresh(), self.cfg.timeout_s)
        finally:
            listener.cancel()

    async def _listen(self, client: Client) -> None:
        with contextlib.suppress(Exception):
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    self._changed.set()

    async def _refresh(self) -> None:
        assert self.client is not None
        tools: list[Any] = []
        cursor: str | None = None
        while True:
            page = await self.client.list_tools(cursor=cursor, cache_mode="refresh")
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        if [t.model_dump() for t in tools] != [t.model_dump() for t in self.tools]:
            self.tools = tools
            log.info("mcp server %s lists %s", self.cfg.name, [t.name for t in tools])
            self.on_change()

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float) -> str:
        client = self.client
        if client is None:
            raise ToolError(f"the {self.cfg.name} tool server is unavailable")
        try:
            result = await client.call_tool(name, arguments, read_timeout_seconds=timeout_s)
        except Exception as exc:
            reason = _reason(exc)
            if "timed out" in reason.lower():
                raise ToolError(f"tool {name} timed out after {timeout_s:g} s") from None
            self._lost.set()
            raise ToolError(f"the {self.cfg.name} tool server failed: {reason}") from None
        text = _text(result)
        if result.is_error:
            raise ToolError(f"tool {name} failed: {text}")
        return text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"


class McpHub:
    """Every configured MCP server, and their tools under unambiguous names."""

    def __init__(self, servers: list[McpServerSettings], ping_interval_s: float) -> None:
        self.ping_interval_s = ping_interval_s
        self.connections = [McpConnection(cfg, self._changed) for cfg in servers]
        self.version = 0

    def _changed(self) -> None:
        self.version += 1

    async def start(self, wait_s: float = 5.0) -> None:
        for connection in self.connections:
            connection.start(self.ping_interval_s)
        # Give servers a moment, so the first listing already has their tools.
        waits = [c.connected.wait() for c in self.connections]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), wait_s)

    async def stop(self) -> None:
        for connection in self.connections:
            await connection.stop()

    def tools(self, taken: set[str]) -> list[Tool]:
        """The servers' tools. A name two sources share is prefixed with the
        server's name (`school_set_light`), so neither shadows the other."""
        counts: dict[str, int] = {}
        for connection in self.connections:
            for tool in connection.tools:
                counts[tool.name] = counts.get(tool.name, 0) + 1
        out = []
        for connection in self.connections:
            for tool in connection.tools:
                clash = counts[tool.name] > 1 or tool.name in taken
                name = f"{connection.cfg.name}_{tool.name}" if clash else tool.name
                out.append(self._wrap(connection, tool, name))
        return out

    @staticmethod
    def _wrap(connection: McpConnection, tool: Any, name: str) -> Tool:
        async def handler(arguments: dict[str, Any]) -> str:
            return await connection.call(tool.name, arguments, connection.cfg.timeout_s)

        schema = dict(tool.input_schema or {"type": "object", "properties": {}})
        return Tool(
            name=name,
            description=tool.description or tool.name,
            handler=handler,
            parameters=schema,
        )
