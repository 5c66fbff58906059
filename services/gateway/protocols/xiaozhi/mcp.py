"""The board's own MCP server, reached through the Xiaozhi WebSocket: Parley is
the MCP client (JSON-RPC 2.0 in `{"type": "mcp", "payload": ...}` messages).
Its tools become the session's client tools: the tools service offers them to
the model and relays the calls back here."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from parley import json_input
from parley.tool_policy import untrusted_description
from parley.v1 import tools_pb2
from services.gateway.core.errors import ClientToolError

log = logging.getLogger("parley.gateway.xiaozhi")

MCP_PROTOCOL_VERSION = "2024-11-05"
# Model APIs accept [A-Za-z0-9_-] in function names; the boards use dots.
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]")


def exposed_name(device_name: str) -> str:
    return _NOT_NAME.sub("_", device_name)[:64]


class McpRpcError(Exception):
    pass


class DeviceMcp:
    def __init__(
        self,
        send_payload: Callable[[dict[str, Any]], Awaitable[None]],
        timeout_s: float,
        max_pages: int,
        client_version: str = "0.1.0",
    ) -> None:
        self._send = send_payload
        self.timeout_s = timeout_s
        self.max_pages = max_pages
        self.client_version = client_version
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tools: dict[str, tuple[str, tools_pb2.Tool]] = {}  # exposed -> (device name, spec)
        self.server_info: dict[str, Any] = {}

    # --- JSON-RPC ------------------------------------------------------------
    async def request(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        rid = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._send({"jsonrpc": "2.0", "method": method, "params": params, "id": rid})
            reply = await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(rid, None)
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise McpRpcError(str(error.get("message") or reply["error"]))
        return reply.get("result")

    async def on_payload(self, payload: Any) -> None:
        """A JSON-RPC message from the board."""
        if not isinstance(payload, dict):
            log.info("ignoring an mcp payload that is not an object")
            return
        rid = payload.get("id")
        if "method" in payload:
            if rid is None:  # a notification: nothing to answer
                log.info("device notification %s", payload.get("method"))
                return
            # The board asking us something: we serve no methods.
            await self._send(
                {
                    "jsonrpc": "2.0",
                    "id": rid,
                    "error": {"code": -32601, "message": f"unknown method {payload['method']}"},
                }
            )
            return
        future = self._pending.get(rid) if isinstance(rid, int) else None
        if future is None or future.done():
            log.info("mcp reply for no pending request (id %r)", rid)
            return
        future.set_result(payload)

    def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(McpRpcError("the device disconnected"))
        self._pending.clear()

    # --- discovery -----------------------------------------------------------
    async def discover(self) -> int:
        """initialize, then every page of tools/list; the number of tools."""
        result = await self.request(
            "initialize",
            {
                "protocolVersion": MCP_PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "parley", "version": self.client_version},
            },
            self.timeout_s,
        )
        if isinstance(result, dict):
            info = result.get("serverInfo")
            self.server_info = info if isinstance(info, dict) else {}
        cursor = ""
        tools: dict[str, tuple[str, tools_pb2.Tool]] = {}
        for _ in range(self.max_pages):
            page = await self.request(
                "tools/list", {"cursor": cursor, "withUserTools": False}, self.timeout_s
            )
            if not isinstance(page, dict):
                break
            for raw in page.get("tools") or []:
                tool = _tool_spec(raw)
                if tool is not None:
                    tools[tool.name] = (raw["name"], tool)
            cursor = page.get("nextCursor") or ""
            if not isinstance(cursor, str) or not cursor:
                break
        else:
            log.warning("device lists more than %d pages of tools; using those", self.max_pages)
        self._tools = tools
        return len(tools)

    # --- ClientTools ---------------------------------------------------------
    def list_tools(self) -> list[tools_pb2.Tool]:
        return [spec for _, spec in self._tools.values()]

    async def call_tool(self, name: str, arguments_json: str, timeout_s: float) -> str:
        entry = self._tools.get(name)
        if entry is None:
            raise ClientToolError(f"unknown tool: {name}")
        try:
            arguments = json_input.loads(arguments_json) if arguments_json.strip() else {}
        except json_input.BadJson as exc:
            raise ClientToolError(f"{name}: arguments are not valid JSON: {exc}") from None
        try:
            result = await self.request(
                "tools/call", {"name": entry[0], "arguments": arguments}, timeout_s
            )
        except TimeoutError:
            raise ClientToolError(f"the device did not answer {name} in time") from None
        except McpRpcError as exc:
            raise ClientToolError(f"{name} failed on the device: {exc}") from None
        text = _content_text(result)
        if isinstance(result, dict) and result.get("isError"):
            raise ClientToolError(f"{name} failed on the device: {text}")
        return text


def _tool_spec(raw: Any) -> tools_pb2.Tool | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    schema = raw.get("inputSchema")
    if not isinstance(schema, dict):
        schema = {"type": "object", "properties": {}}
    return tools_pb2.Tool(
        name=exposed_name(raw["name"]),
        description=untrusted_description(str(raw.get("description") or raw["name"])),
        parameters_json=json.dumps(schema),
    )


def _content_text(result: Any) -> str:
    if not isinstance(result, dict):
        return json.dumps(result)
    parts = []
    for block in result.get("content") or []:
        if isinstance(block, dict):
            text = block.get("text")
            parts.append(text if isinstance(text, str) else json.dumps(block))
    return "\n".join(parts) if parts else json.dumps(result)
