"""tools.list and tools.call over a real nats-server, and a malformed request."""

from __future__ import annotations

import json

import nats
import pytest

from parley.bus import TOOLS_CALL, TOOLS_LIST
from parley.v1 import tools_pb2

pytestmark = pytest.mark.slow


async def test_list_and_call_over_the_bus(stack) -> None:
    nc = await nats.connect(stack.nats_url)
    try:
        raw = await nc.request(
            TOOLS_LIST, tools_pb2.ToolListRequest(session_id="s").SerializeToString(), timeout=5
        )
        listing = tools_pb2.ToolListReply.FromString(raw.data)
        tools = {t.name: t for t in listing.tools}
        assert "get_current_time" in tools
        assert "timezone" in json.loads(tools["get_current_time"].parameters_json)["properties"]

        call = tools_pb2.ToolCallRequest(
            session_id="s",
            call_id="c1",
            name="get_current_time",
            arguments_json='{"timezone": "Europe/Paris"}',
        )
        reply = tools_pb2.ToolCallReply.FromString(
            (await nc.request(TOOLS_CALL, call.SerializeToString(), timeout=5)).data
        )
        assert reply.ok and reply.call_id == "c1"
        assert json.loads(reply.content)["timezone"] == "Europe/Paris"

        call.arguments_json = '{"timezone": "Nowhere/Land"}'
        reply = tools_pb2.ToolCallReply.FromString(
            (await nc.request(TOOLS_CALL, call.SerializeToString(), timeout=5)).data
        )
        assert not reply.ok and "Nowhere/Land" in reply.error

        # Garbage gets an answer, not silence, and the service lives on.
        reply = tools_pb2.ToolCallReply.FromString(
            (await nc.request(TOOLS_CALL, b"\xff\xfe garbage", timeout=5)).data
        )
        assert not reply.ok and "malformed request" in reply.error
        call.arguments_json = "{}"
        reply = tools_pb2.ToolCallReply.FromString(
            (await nc.request(TOOLS_CALL, call.SerializeToString(), timeout=5)).data
        )
        assert reply.ok
    finally:
        await nc.close()
