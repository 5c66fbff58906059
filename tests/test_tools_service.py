"""The tools service against a real nats-server: as its own process for what a
caller sees (listing, calls, bad requests, start and stop), and in this process
where a test needs a tool of its own (slow, hanging, crashing)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import nats
import pytest

from parley.bus import TOOLS_CALL, TOOLS_LIST, Bus
from parley.config import NatsSettings, ParleySettings, ToolsSettings
from parley.v1 import tools_pb2
from services.tools.registry import Tool
from services.tools.service import ToolsStage
from tests.support.stack import (
    ProcessFailed,
    Running,
    running_service,
    start_nats,
    start_service,
)

READY_S = 60.0


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tools-service")


@pytest.fixture(scope="module")
async def nats_url(logs: Path) -> AsyncIterator[str]:
    async with start_nats(logs) as (_, url):
        yield url


@pytest.fixture(scope="module")
async def service(nats_url: str, logs: Path) -> AsyncIterator[Running]:
    async with running_service(
        "tools", {"PARLEY_NATS__URL": nats_url}, logs, timeout_s=READY_S
    ) as running:
        yield running


@pytest.fixture(scope="module")
async def bus(nats_url: str, service: Running) -> AsyncIterator[Bus]:
    connected = await Bus.connect(NatsSettings(url=nats_url), "test")
    yield connected
    await connected.close()


async def call(
    bus: Bus, name: str, arguments: dict[str, Any] | str = "", **fields: Any
) -> tools_pb2.ToolCallReply:
    request = tools_pb2.ToolCallRequest(
        session_id="s1",
        call_id=fields.pop("call_id", "c1"),
        name=name,
        arguments_json=arguments if isinstance(arguments, str) else json.dumps(arguments),
        **fields,
    )
    return await bus.request(TOOLS_CALL, request, tools_pb2.ToolCallReply, timeout=10)


async def test_listing_offers_the_builtin_tools_with_their_schemas(bus: Bus) -> None:
    listing = await bus.request(
        TOOLS_LIST, tools_pb2.ToolListRequest(session_id="s1"), tools_pb2.ToolListReply, 10
    )
    tools = {t.name: t for t in listing.tools}
    assert {"get_current_time", "end_conversation"} <= set(tools)
    schema = json.loads(tools["get_current_time"].parameters_json)
    assert schema["type"] == "object"
    assert schema["properties"]["timezone"]["type"] == "string"
    assert "timezone" not in schema["required"]
    assert tools["get_current_time"].description


async def test_current_time_is_now_in_the_asked_zone(bus: Bus) -> None:
    reply = await call(bus, "get_current_time", {"timezone": "Asia/Kolkata"}, call_id="t1")
    assert reply.ok, reply.error
    assert reply.call_id == "t1"
    result = json.loads(reply.content)
    at = datetime.fromisoformat(result["iso"])
    assert abs((at - datetime.now(UTC)).total_seconds()) < 5
    assert at.utcoffset() == datetime.now(ZoneInfo("Asia/Kolkata")).utcoffset()
    assert result["timezone"] == "Asia/Kolkata"
    assert result["weekday"] == at.strftime("%A")
    assert result["spoken"].startswith("It is ") and str(at.year) in result["spoken"]


async def test_current_time_defaults_to_the_configured_zone(bus: Bus) -> None:
    reply = await call(bus, "get_current_time")
    assert reply.ok, reply.error
    assert json.loads(reply.content)["timezone"] == "UTC"


async def test_end_conversation_says_goodbye(bus: Bus) -> None:
    reply = await call(bus, "end_conversation", {"goodbye": "See you!"})
    assert reply.ok, reply.error
    assert json.loads(reply.content) == {"ended": True, "goodbye": "See you!"}


async def test_an_unknown_time_zone_is_named_in_the_error(bus: Bus) -> None:
    reply = await call(bus, "get_current_time", {"timezone": "Nowhere/Land"}, call_id="t2")
    assert not reply.ok
    assert reply.call_id == "t2"
    assert "Nowhere/Land" in reply.error and "time zone" in reply.error


async def test_an_unknown_tool_is_an_error(bus: Bus) -> None:
    reply = await call(bus, "fly_to_the_moon")
    assert not reply.ok
    assert reply.error == "unknown tool: fly_to_the_moon"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"timezone": 3}, "argument 'timezone' must be a string"),
        ({"zone": "UTC"}, "unknown argument 'zone'"),
        ("{not json", "arguments are not valid JSON"),
        ("[1, 2]", "arguments must be a JSON object"),
    ],
)
async def test_bad_arguments_are_clear_errors(
    bus: Bus, arguments: dict[str, Any] | str, message: str
) -> None:
    reply = await call(bus, "get_current_time", arguments)
    assert not reply.ok
    assert message in reply.error


async def test_a_malformed_request_is_answered_and_the_service_lives_on(
    nats_url: str, bus: Bus, service: Running
) -> None:
    nc = await nats.connect(nats_url)
    try:
        raw = await nc.request(TOOLS_CALL, b"\xff\xfe not protobuf", timeout=5)
        reply = tools_pb2.ToolCallReply.FromString(raw.data)
        assert not reply.ok
        assert reply.error.startswith("malformed request:")
        # A listing depends on nothing in the request, so garbage gets one too.
        raw = await nc.request(TOOLS_LIST, b"\xff\xfe not protobuf", timeout=5)
        listing = tools_pb2.ToolListReply.FromString(raw.data)
        assert "get_current_time" in {t.name for t in listing.tools}
    finally:
        await nc.close()
    assert (await call(bus, "get_current_time")).ok
    assert service.returncode is None
    assert "malformed request on parley.v1.tools.call" in service.text()


async def test_instances_share_the_load_and_stop_cleanly_on_sigterm(
    nats_url: str, bus: Bus, service: Running, logs: Path
) -> None:
    second = await start_service("tools", {"PARLEY_NATS__URL": nats_url}, logs, timeout_s=READY_S)
    try:
        replies = await asyncio.gather(*(call(bus, "end_conversation") for _ in range(20)))
        assert all(r.ok for r in replies)
    finally:
        code = await second.stop()
    assert code == 0, second.tail()
    assert "tools draining" in second.text() and "tools stopped" in second.text()
    # The first instance answers alone now.
    assert (await call(bus, "get_current_time")).ok


async def test_a_bad_default_time_zone_stops_the_service_at_start(
    nats_url: str, logs: Path
) -> None:
    env = {"PARLEY_NATS__URL": nats_url, "PARLEY_TOOLS__TIMEZONE": "Mars/Base"}
    with pytest.raises(ProcessFailed, match="exited with 2") as failure:
        await start_service("tools", env, logs, timeout_s=READY_S)
    assert "unknown time zone: 'Mars/Base'" in str(failure.value)


# In this process, on a nats-server of its own, so no other instance answers.


@contextlib.asynccontextmanager
async def local_stage(
    logs: Path, *tools: Tool, **tool_settings: Any
) -> AsyncIterator[tuple[ToolsStage, Bus]]:
    async with start_nats(logs) as (_, url):
        settings = ParleySettings(nats=NatsSettings(url=url), tools=ToolsSettings(**tool_settings))
        stage_bus = await Bus.connect(settings.nats, "tools")
        stage = ToolsStage(settings, stage_bus)
        await stage.load()
        for tool in tools:
            stage.registry.add(tool)
        await stage.start()
        client = await Bus.connect(settings.nats, "test")
        try:
            yield stage, client
        finally:
            await client.close()
            await stage.close()
            await stage_bus.close()


def sleeper(name: str, seconds: float) -> Tool:
    async def sleep(arguments: dict[str, Any]) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    return Tool(name, f"sleeps {seconds} s", sleep)


async def test_calls_run_side_by_side(logs: Path) -> None:
    async with local_stage(logs, sleeper("nap", 0.6)) as (_, client):
        started = time.monotonic()
        replies = await asyncio.gather(*(call(client, "nap", call_id=str(i)) for i in range(4)))
        elapsed = time.monotonic() - started
    assert [r.call_id for r in replies] == ["0", "1", "2", "3"]
    assert all(r.ok and r.content == "rested" for r in replies)
    # One after another would take 2.4 s.
    assert elapsed < 1.5


async def test_the_shorter_of_both_timeouts_applies(logs: Path) -> None:
    async with local_stage(logs, sleeper("hang", 30), call_timeout_s=0.5) as (_, client):
        asked = await call(client, "hang", timeout_s=0.2)
        capped = await call(client, "hang", timeout_s=60)
        nonsense = await call(client, "hang", timeout_s=-1)
    assert not asked.ok and asked.error == "tool hang timed out after 0.2 s"
    assert not capped.ok and capped.error == "tool hang timed out after 0.5 s"
    assert not nonsense.ok and nonsense.error == "tool hang timed out after 0.5 s"


async def test_a_crashing_tool_is_an_error_result(logs: Path) -> None:
    async def boom(arguments: dict[str, Any]) -> str:
        raise RuntimeError("the flux capacitor is empty")

    async with local_stage(logs, Tool("boom", "always fails", boom)) as (_, client):
        reply = await call(client, "boom")
        assert not reply.ok
        assert reply.error == "tool boom failed: the flux capacitor is empty"
        assert (await call(client, "get_current_time")).ok


async def test_closing_lets_calls_under_way_answer(logs: Path) -> None:
    async with local_stage(logs, sleeper("nap", 0.5)) as (stage, client):
        pending = asyncio.create_task(call(client, "nap"))
        while not stage._calls:
            await asyncio.sleep(0.01)
        await stage.close()
        reply = await pending
    assert reply.ok and reply.content == "rested"


async def test_the_service_enforces_its_own_allow_list(nats_url: str, logs: Path) -> None:
    # A second instance on the same bus would share the queue group: this one
    # gets a bus of its own.
    del nats_url
    async with start_nats(logs / "allow") as (_, url):
        env = {"PARLEY_NATS__URL": url, "PARLEY_TOOLS__ALLOW": '["get_current_*"]'}
        async with running_service("tools", env, logs / "allow", timeout_s=READY_S):
            bus = await Bus.connect(NatsSettings(url=url), "test")
            try:
                # Whatever the llm showed its model, or whoever publishes tools.call.
                refused = await call(bus, "end_conversation")
                assert not refused.ok
                assert refused.error == "tool end_conversation is not allowed"
                assert (await call(bus, "get_current_time", {"timezone": "UTC"})).ok
                listing = await bus.request(
                    TOOLS_LIST, tools_pb2.ToolListRequest(), tools_pb2.ToolListReply, timeout=10
                )
                assert [t.name for t in listing.tools] == ["get_current_time"]
            finally:
                await bus.close()
