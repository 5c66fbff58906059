"""Tools by name: their schema for the model, and a guarded way to call them.

Built-in tools are added one by one; other sources (the MCP hub) are asked for
their current tools on every lookup, so a server's tools come and go with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

ToolHandler = Callable[[dict[str, Any]], Awaitable[str]]


class ToolError(Exception):
    """A failure the model should hear about, in words."""


def _type_ok(value: Any, expected: Any) -> bool:
    if isinstance(expected, list):
        return any(_type_ok(value, t) for t in expected)
    # bool is an int to Python, never to JSON.
    if expected == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "string":
        return isinstance(value, str)
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    if expected == "null":
        return value is None
    return True  # a type we do not know is the tool's own business


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


@dataclass
class Tool:
    name: str
    description: str
    handler: ToolHandler
    # JSON Schema of the arguments object.
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "required": []}
    )

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        """The top-level checks a model gets wrong most: missing, unknown and
        mistyped arguments. Deeper validation is left to the tool; schemas from
        MCP servers are not trusted to be well formed, so odd parts are skipped."""
        props = self.parameters.get("properties")
        props = props if isinstance(props, dict) else {}
        required = self.parameters.get("required")
        required = required if isinstance(required, list) else []
        missing = [key for key in required if key not in arguments]
        if missing:
            names = ", ".join(repr(k) for k in missing)
            plural = "s" if len(missing) > 1 else ""
            raise ToolError(f"{self.name}: missing required argument{plural} {names}")
        for key, value in arguments.items():
            spec = props.get(key)
            if not isinstance(spec, dict):
                # JSON Schema allows extra keys unless the schema says otherwise.
                if self.parameters.get("additionalProperties") is False:
                    known = ", ".join(props) or "none"
                    raise ToolError(f"{self.name}: unknown argument {key!r} (known: {known})")
                continue
            expected = spec.get("type")
            if expected is not None and not _type_ok(value, expected):
                types = expected if isinstance(expected, list) else [expected]
                wanted = " or ".join(_a(str(t)) for t in types)
                raise ToolError(f"{self.name}: argument {key!r} must be {wanted}")
            choices = spec.get("enum")
            if isinstance(choices, list) and value not in choices:
                raise ToolError(f"{self.name}: argument {key!r} must be one of {choices}")


# Called with the names already taken, so a source can keep its own unambiguous.
ToolSource = Callable[[set[str]], list[Tool]]


def parse_arguments(name: str, arguments_json: str) -> dict[str, Any]:
    # Models send "" for a call without arguments.
    if not arguments_json.strip():
        return {}
    try:
        arguments = json.loads(arguments_json)
    except json.JSONDecodeError as exc:
        raise ToolError(f"{name}: arguments are not valid JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise ToolError(f"{name}: arguments must be a JSON object")
    return arguments


class ToolRegistry:
    """Built-in tools plus dynamic sources (MCP servers); a built-in name wins."""

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
        """Run a tool within timeout_s; every failure is a ToolError whose
        message the model can act on."""
        tool = self.all().get(name)
        if tool is None:
            raise ToolError(f"unknown tool: {name}")
        arguments = parse_arguments(name, arguments_json)
        tool.check_arguments(arguments)
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                return await tool.handler(arguments)
        except TimeoutError as exc:
            if deadline.expired():
                raise ToolError(f"tool {name} timed out after {timeout_s:g} s") from None
            # The tool's own timeout (an HTTP client's, say), not ours.
            raise ToolError(f"tool {name} failed: {exc or 'timed out'}") from None
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"tool {name} failed: {exc or type(exc).__name__}") from None
