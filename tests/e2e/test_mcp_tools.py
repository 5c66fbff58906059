"""The tools service as an MCP hub: real MCP servers built with the `mcp` SDK
(streamable HTTP and stdio), an llm driven by a scripted OpenAI-compatible
server, and a spoken request that switches a light on."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import nats
import pytest
from mcp import Client

from parley.bus import TOOLS_CALL, TOOLS_LIST
from parley.cli.client import ParleyClient
from parley.v1 import tools_pb2
from tests.e2e.harness import REPO, Process, free_port, spawn, start_scripted_stack
from tests.e2e.test_pipeline import ask
from tests.support.openai_chat_stub import ChatReply, tool_call_deltas

pytestmark = pytest.mark.slow


async def start_mcp_server(
    workdir, port: int, name: str = "school", transport: str = "streamable-http"
) -> Process:
    return await spawn(
        f"mcp-{name}",
        [
            sys.executable,
            "-m",
            "tests.support.mcp_server",
            "--transport",
            transport,
            "--port",
            str(port),
            "--name",
            name,
        ],
        workdir,
        {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        "Uvicorn running",
    )


@pytest.fixture(scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("mcp")
    port = free_port()
    school = await start_mcp_server(work, port)
    garden_port = free_port()
    garden = await start_mcp_server(work, garden_port, "garden", "sse")
    servers = [
        {
            "name": "school",
            "transport": "streamable_http",
            "url": f"http://127.0.0.1:{port}/mcp",
            "timeout_s": 2,
        },
        {
            "name": "home",
            "transport": "stdio",
            "command": sys.executable,
            "args": ["-m", "tests.support.mcp_server", "--name", "home"],
            "env": {"PYTHONPATH": str(REPO)},
        },
        {
            "name": "garden",
            "transport": "sse",
            "url": f"http://127.0.0.1:{garden_port}/sse",
        },
        {
            "name": "ghost",
            "transport": "streamable_http",
            "url": f"http://127.0.0.1:{free_port()}/mcp",
        },
    ]
    async with start_scripted_stack(
        work,
        env={
            "PARLEY_TOOLS__MCP_SERVERS": json.dumps(servers),
            "PARLEY_TOOLS__MCP_PING_INTERVAL_S": "1",
        },
    ) as (stack, stub):
        nc = await nats.connect(stack.nats_url)
        state = {"school": school, "port": port, "work": work}
        yield stack, stub, nc, state
        await nc.close()
    await stack.stop(state["school"])
    await stack.stop(garden)


async def tool_names(nc) -> set[str]:
    raw = await nc.request(TOOLS_LIST, tools_pb2.ToolListRequest().SerializeToString(), timeout=5)
    return {t.name for t in tools_pb2.ToolListReply.FromString(raw.data).tools}


async def call(nc, name: str, arguments: dict) -> tools_pb2.ToolCallReply:
    request = tools_pb2.ToolCallRequest(
        call_id="t", name=name, arguments_json=json.dumps(arguments)
    )
    raw = await nc.request(TOOLS_CALL, request.SerializeToString(), timeout=15)
    return tools_pb2.ToolCallReply.FromString(raw.data)


async def test_servers_tools_are_listed_and_namespaced(hub) -> None:
    _, _, nc, _ = hub
    names = await tool_names(nc)
    # Both servers offer the same tools: each keeps its own under its prefix.
    assert {
        "school_set_light",
        "home_set_light",
        "school_get_exam_question",
        "home_get_exam_question",
        "get_current_time",
    } <= names
    assert not any(n.startswith("ghost_") for n in names)
    reply = await call(nc, "home_get_exam_question", {"subject": "history"})
    assert reply.ok and "1989" in reply.content
    # The SSE transport too.
    assert "garden_set_light" in names
    reply = await call(nc, "garden_set_light", {"room": "shed", "on": True})
    assert reply.ok, reply.error


async def test_spoken_request_switches_the_light_on(hub) -> None:
    stack, stub, _, state = hub
    stub.replies = [
        ChatReply(
            tool_call_deltas([("call_l", "school_set_light", '{"room": "kitchen", "on": true}')])
        ),
        ChatReply(["Done, the kitchen light is on."]),
    ]
    client = await ParleyClient.open(stack.gateway_url)
    try:
        asked = len(stub.requests)
        turn = await ask(client, "Please switch on the light in the kitchen.")
        assert "kitchen" in turn["transcript"].lower()
        assert turn["text"] == "Done, the kitchen light is on."
        assert client.audio
        result = [m for m in stub.requests[asked + 1].json["messages"] if m["role"] == "tool"]
        assert result[0]["content"] == "The kitchen light is now on."
    finally:
        await client.close()
    async with Client(f"http://127.0.0.1:{state['port']}/mcp") as direct:
        status = await direct.call_tool("light_status", {})
    assert json.loads(status.content[0].text) == {"kitchen": True}


async def test_a_hanging_tool_and_a_dead_server_give_spoken_apologies(hub) -> None:
    stack, stub, nc, state = hub
    client = await ParleyClient.open(stack.gateway_url)
    try:
        stub.replies = [
            ChatReply(
                tool_call_deltas([("call_s", "school_slow_lookup", '{"query": "anything"}')])
            ),
            ChatReply(["Sorry, that lookup took too long."]),
        ]
        asked = len(stub.requests)
        await client.send_json({"type": "text_input", "text": "Look something up."})
        ended = await client.wait_for("response_end", timeout=30)
        assert ended["text"] == "Sorry, that lookup took too long."
        tool_result = stub.requests[asked + 1].json["messages"][-1]["content"]
        assert tool_result.startswith("Error:") and "timed out" in tool_result
        await client.wait_for("tts_end", response_id=ended["response_id"], timeout=30)

        # The school server goes down: the call fails into words, not silence.
        await stack.stop(state["school"])
        stub.replies = [
            ChatReply(
                tool_call_deltas([("call_d", "school_set_light", '{"room": "hall", "on": true}')])
            ),
            ChatReply(["Sorry, I cannot reach the lights right now."]),
        ]
        mark = len(client.events)
        asked = len(stub.requests)
        await client.send_json({"type": "text_input", "text": "Switch on the hall light."})
        started = await client.wait_for("response_start", after=mark, timeout=30)
        ended = await client.wait_for(
            "response_end", after=mark, response_id=started["response_id"], timeout=30
        )
        assert ended["status"] == "completed"
        tool_result = stub.requests[asked + 1].json["messages"][-1]["content"]
        assert tool_result.startswith("Error:"), tool_result

        # It comes back: the hub reconnects and its tools return.
        state["school"] = await start_mcp_server(state["work"], state["port"])
        async with asyncio.timeout(20):
            while "school_set_light" not in await tool_names(nc):
                await asyncio.sleep(0.5)
        reply = await call(nc, "school_set_light", {"room": "hall", "on": False})
        assert reply.ok, reply.error
    finally:
        await client.close()


async def test_tool_list_follows_the_servers_changes(hub) -> None:
    _, _, nc, _ = hub
    assert "get_weather" not in await tool_names(nc)
    reply = await call(nc, "home_add_weather_tool", {})
    assert reply.ok
    async with asyncio.timeout(10):
        while "get_weather" not in await tool_names(nc):
            await asyncio.sleep(0.3)
    reply = await call(nc, "get_weather", {"city": "Lyon"})
    assert reply.ok and "Lyon" in reply.content


async def test_tool_round_trip_over_the_bus_beside_a_direct_mcp_call(hub) -> None:
    """The same MCP tool 30 times each way, interleaved: over the bus (llm's
    path: nats request -> tools service -> MCP session) and straight from an
    MCP client; plus a built-in tool over the bus. Medians to var/."""
    _, _, nc, state = hub
    bus, direct_ms, builtin = [], [], []
    async with Client(f"http://127.0.0.1:{state['port']}/mcp") as direct:
        for _ in range(30):
            began = time.perf_counter()
            reply = await call(nc, "school_light_status", {})
            bus.append((time.perf_counter() - began) * 1000)
            assert reply.ok, reply
            began = time.perf_counter()
            await direct.call_tool("light_status", {})
            direct_ms.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            assert (await call(nc, "get_current_time", {})).ok
            builtin.append((time.perf_counter() - began) * 1000)
    report = {
        "calls": 30,
        "mcp_tool_over_bus_median_ms": round(statistics.median(bus), 2),
        "mcp_tool_direct_median_ms": round(statistics.median(direct_ms), 2),
        "bus_overhead_median_ms": round(statistics.median(bus) - statistics.median(direct_ms), 2),
        "builtin_tool_over_bus_median_ms": round(statistics.median(builtin), 2),
    }
    out = REPO / "var" / "tool-round-trip.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\ntool round trip: {report}")
