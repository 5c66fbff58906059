"""Tools a voice agent needs without any server."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.tools.registry import Tool, ToolError, ToolRegistry


def current_time_tool(default_zone: str) -> Tool:
    async def get_current_time(arguments: dict[str, Any]) -> str:
        zone_name = arguments.get("timezone") or default_zone
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone: {zone_name!r} (use an IANA name)") from None
        now = datetime.now(zone)
        hour = now.strftime("%I").lstrip("0")
        spoken = f"It is {hour}:{now:%M %p} on {now:%A, %B} {now.day}, {now.year}"
        return json.dumps(
            {
                "iso": now.isoformat(),
                "weekday": now.strftime("%A"),
                "timezone": zone_name,
                "spoken": spoken,
            }
        )

    return Tool(
        name="get_current_time",
        description="The current date and time, in a given time zone or the default one.",
        handler=get_current_time,
        parameters={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone name, e.g. Europe/Paris",
                }
            },
            "required": [],
        },
    )


def end_conversation_tool() -> Tool:
    async def end_conversation(arguments: dict[str, Any]) -> str:
        return json.dumps({"ended": True, "goodbye": arguments.get("goodbye") or "Goodbye!"})

    return Tool(
        name="end_conversation",
        description="End the conversation when the user says goodbye.",
        handler=end_conversation,
        parameters={
            "type": "object",
            "properties": {"goodbye": {"type": "string", "description": "Last words to say"}},
            "required": [],
        },
    )


def builtin_registry(default_zone: str) -> ToolRegistry:
    registry = ToolRegistry()
    registry.add(current_time_tool(default_zone))
    registry.add(end_conversation_tool())
    return registry
