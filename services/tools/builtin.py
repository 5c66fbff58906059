"""Tools a voice agent needs without any server. Kept few on purpose: every
tool offered costs prompt tokens on every turn."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.tools.registry import Tool, ToolError, ToolRegistry


def resolve_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    # ValueError: keys that are not relative paths; OSError: a folder like "Europe/".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(
            f"unknown time zone: {name!r} (use an IANA name such as Europe/Paris)"
        ) from None


def spoken_time(now: datetime) -> str:
    """ "It is 3:42 PM on Tuesday, November 25, 2026": what a TTS reads well."""
    hour = now.hour % 12 or 12
    half = "AM" if now.hour < 12 else "PM"
    return f"It is {hour}:{now:%M} {half} on {now:%A, %B} {now.day}, {now.year}"


def current_time_tool(default_zone: str) -> Tool:
    resolve_zone(default_zone)  # a bad default is a configuration error: fail at start

    async def get_current_time(arguments: dict[str, Any]) -> str:
        zone_name = arguments.get("timezone") or default_zone
        now = datetime.now(resolve_zone(zone_name))
        return json.dumps(
            {
                "iso": now.isoformat(timespec="seconds"),
                "weekday": now.strftime("%A"),
                "timezone": zone_name,
                "spoken": spoken_time(now),
            }
        )

    return Tool(
        name="get_current_time",
        description=(
            "The current date and time. Give a time zone when the user asks "
            f"about a place; otherwise the default ({default_zone}) is used."
        ),
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
            "additionalProperties": False,
        },
    )


def end_conversation_tool() -> Tool:
    # The gateway ends the session when it sees this result; the tool itself
    # only states the intent, so it stays stateless.
    async def end_conversation(arguments: dict[str, Any]) -> str:
        return json.dumps({"ended": True, "goodbye": arguments.get("goodbye") or "Goodbye!"})

    return Tool(
        name="end_conversation",
        description="End the conversation when the user says goodbye or asks to stop.",
        handler=end_conversation,
        parameters={
            "type": "object",
            "properties": {"goodbye": {"type": "string", "description": "Last words to say"}},
            "required": [],
            "additionalProperties": False,
        },
    )


def builtin_registry(default_zone: str) -> ToolRegistry:
    """The built-in tools; raises ToolError if default_zone is not a time zone."""
    registry = ToolRegistry()
    registry.add(current_time_tool(default_zone))
    registry.add(end_conversation_tool())
    return registry
