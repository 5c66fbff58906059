import asyncio
import json
from datetime import UTC, datetime

import pytest

from services.tools.builtin import builtin_registry
from services.tools.registry import Tool, ToolError


async def test_current_time_in_a_zone() -> None:
    registry = builtin_registry("UTC")
    result = json.loads(await registry.call("get_current_time", '{"timezone": "Asia/Tokyo"}', 5))
    at = datetime.fromisoformat(result["iso"])
    assert abs((at - datetime.now(UTC)).total_seconds()) < 5
    assert at.utcoffset().total_seconds() == 9 * 3600
    assert result["spoken"].startswith("It is ")


async def test_bad_calls_are_clear_errors() -> None:
    registry = builtin_registry("UTC")
    with pytest.raises(ToolError, match="unknown time zone: 'Mars/Base'"):
        await registry.call("get_current_time", '{"timezone": "Mars/Base"}', 5)
    with pytest.raises(ToolError, match="unknown tool: fly"):
        await registry.call("fly", "{}", 5)
    with pytest.raises(ToolError, match="not valid JSON"):
        await registry.call("get_current_time", "{nope", 5)
    with pytest.raises(ToolError, match="must be a string"):
        await registry.call("get_current_time", '{"timezone": 3}', 5)


async def test_a_hanging_tool_times_out() -> None:
    async def hang(arguments: dict) -> str:
        await asyncio.sleep(60)
        return ""

    registry = builtin_registry("UTC")
    registry.add(Tool("slow", "never answers", hang))
    with pytest.raises(ToolError, match="timed out after 0.2 s"):
        await registry.call("slow", "{}", 0.2)
