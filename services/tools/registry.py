"""Tools by name: their schema for the model, and a guarded way to call them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

ToolHandler = Callable[[dict[str, Any]], Awaitable[str]]

_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


class ToolError(Exception):
    """A failure the model should hear about, in words."""


@dataclass
class Tool:
    name: str
    description: str
    handler: ToolHandler
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "required": []}
    )

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        props = self.parameters.get("properties", {})
        for key in self.parameters.get("required", []):
            if key not in arguments:
                raise ToolError(f"{self.name}: missing required argument {key!r}")
        for key, value in arguments.items():
            spec = props.get(key)
            if spec is None:
                raise ToolError(f"{self.name}: unknown argument {key!r}")
            expected = _JSON_TYPES.get(spec.get("type", ""))
            if expected is not None and (
                not isinstance(value, expected)
                or (isinstance(value, bool) and expected is not bool)
            ):
                raise ToolError(f"{self.name}: argument {key!r} must be a {spec['type']}")


ToolSource = Callable[[set[str]], list[Tool]]


class ToolRegistry:
    """Built-in tools plus dynamic sources (MCP servers); a source is told the
    names already taken so it can keep its own unambiguous."""

    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}
        self.sources: list[ToolSource] = []

    def add(self, tool: Tool) -> None:
        self.tools[tool.name] = tool

    def add_source(self, source: ToolSource) -> None:
        self.sources.append(source)

    def all(self) -> dict[str, Tool]:
        merged = dict(self.tools)
        for source in self.sources:
            for tool in source(set(merged)):
                merged.setdefault(tool.name, tool)
        return merged

    def describe(self) -> list[Tool]:
        return list(self.all().values())

    async def call(self, name: str, arguments_json: str, timeout_s: float) -> str:
        """Run a tool; every failure becomes a ToolError with a clear message."""
        tool = self.all().get(name)
        if tool is None:
            raise ToolError(f"unknown tool: {name}")
        try:
            arguments = json.loads(arguments_json) if arguments_json.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolError(f"{name}: arguments are not valid JSON: {exc}") from None
        if not isinstance(arguments, dict):
            raise ToolError(f"{name}: arguments must be a JSON object")
        tool.check_arguments(arguments)
        try:
            async with asyncio.timeout(timeout_s):
                return await tool.handler(arguments)
        except TimeoutError:
            raise ToolError(f"tool {name} timed out after {timeout_s:g} s") from None
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"tool {name} failed: {exc}") from None
