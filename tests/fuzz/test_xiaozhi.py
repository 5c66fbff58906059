"""Fuzzing the Xiaozhi WebSocket (/xiaozhi/v1/): hello, listen, abort, mcp
and iot messages with random fields, and binary audio in each protocol
version's framing (1 bare Opus, 2 and 3 with headers) with random headers
and payloads. The version is the connection's: one connection for each."""

from __future__ import annotations

import asyncio
import json
import random
import struct
from typing import Any

import pytest
from hypothesis import given
from websockets.sync.client import ClientConnection

from services.gateway.protocols.xiaozhi import framing
from tests.fuzz import health
from tests.fuzz.strategies import (
    CASES,
    FUZZ,
    Gen,
    binary_frame,
    cases,
    frames,
    integer,
    json_value,
    message,
    one_of,
    text,
    text_frame,
)
from tests.fuzz.wsdoor import WsDoor, ws_connect

pytestmark = pytest.mark.slow

HELLO = {
    "type": "hello",
    "version": 1,
    "features": {"mcp": True},
    "transport": "websocket",
    "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60},
}
# goodbye ends the connection and listen (stop: Whisper on what came) a
# turn: rarely (see test_parley_ws and test_echokit).
TYPES = ["hello", "abort", "mcp", "iot"] * 20 + ["goodbye", "listen", "listen"]


def tool(rng: random.Random) -> Any:
    return {
        "name": one_of(rng, text, json_value, "self.x"),
        "description": one_of(rng, text, json_value, lambda r: "d" * r.choice([10, 10_000])),
        "inputSchema": one_of(rng, json_value, {"type": "object", "properties": {}}),
    }


def jsonrpc(rng: random.Random) -> Any:
    """What the board's MCP server might answer (or ask): right and wrong."""
    msg: dict[str, Any] = {"jsonrpc": one_of(rng, "2.0", "1.0", json_value)}
    if rng.random() < 0.8:
        msg["id"] = one_of(rng, integer, json_value)
    pick = rng.randrange(4)
    if pick == 0:
        msg["result"] = {
            "tools": one_of(rng, lambda r: [tool(r) for _ in range(r.randint(0, 3))], json_value),
            "nextCursor": one_of(rng, "", "1", text, json_value),
        }
    elif pick == 1:
        msg["result"] = one_of(rng, json_value, {"content": [{"type": "text", "text": "true"}]})
    elif pick == 2:
        msg["error"] = one_of(rng, json_value, {"code": -32601, "message": "no"})
    else:
        msg["method"] = one_of(rng, "initialize", "tools/list", "tools/call", text)
        msg["params"] = json_value(rng)
    return msg


def audio_params(rng: random.Random) -> Any:
    params = {
        "format": one_of(rng, "opus", "pcm", "mp3", json_value),
        "sample_rate": one_of(rng, 8000, 16000, 24000, 48000, 0, -1, 123457, json_value),
        "channels": one_of(rng, 1, 2, 0, -1, json_value),
        "frame_duration": one_of(rng, 20, 60, 0, 120, -5, 10_000, json_value),
    }
    return {k: v for k, v in params.items() if rng.random() < 0.8}


FIELDS: dict[str, Gen] = {
    "session_id": text,
    "version": lambda r: r.randint(-1, 5),
    "transport": lambda r: r.choice(["websocket", "udp"]),
    "features": lambda r: {r.choice(["mcp", "aec", "x"]): json_value(r)},
    "audio_params": audio_params,
    "state": lambda r: r.choice(["start", "stop", "detect"]),
    "mode": lambda r: r.choice(["auto", "manual", "realtime"]),
    "text": text,
    "reason": lambda r: one_of(r, "wake_word_detected", text),
    "payload": jsonrpc,
    "descriptors": lambda r: [json_value(r) for _ in range(r.randint(0, 3))],
    "states": lambda r: [json_value(r) for _ in range(r.randint(0, 3))],
}


def xiaozhi_message(rng: random.Random) -> Any:
    return message(rng, TYPES, FIELDS)


def audio_frame(rng: random.Random, version: int) -> bytes:
    """A frame of the version's framing with random header fields (payload
    sizes right and wrong, either kind, a JSON payload), or bytes that only
    look like one."""
    payload = rng.randbytes(rng.randint(0, 200))
    if version == 1:
        return payload
    if rng.random() < 0.2:
        return binary_frame(rng)
    kind = rng.choice([framing.TYPE_OPUS, framing.TYPE_JSON, rng.randrange(256)])
    if kind == framing.TYPE_JSON and rng.random() < 0.5:
        payload = json.dumps(xiaozhi_message(rng)).encode()
    size = max(len(payload) + rng.choice([0, 0, 0, 1, -1, 1000]), 0)
    if version == 2:
        header = struct.pack(">HHIII", rng.randrange(65536), kind, 0, rng.randrange(2**32), size)
    else:
        header = struct.pack(">BBH", kind, rng.randrange(256), size & 0xFFFF)
    return header + payload


def case_for(rng: random.Random) -> tuple[int, list[str | bytes]]:
    version = rng.choice(framing.VERSIONS)
    return version, frames(
        rng, lambda r: text_frame(r, xiaozhi_message), lambda r: audio_frame(r, version)
    )


def door_for(stack, version: int) -> WsDoor:  # type: ignore[no-untyped-def]
    url = f"ws://127.0.0.1:{stack.gateway_port}/xiaozhi/v1/"
    headers = {
        "Protocol-Version": str(version),
        "Device-Id": f"fuzz-{version}",
        "Client-Id": "fuzz",
    }

    def greet(ws: ClientConnection) -> None:
        ws.send(json.dumps({**HELLO, "version": version}))

    return WsDoor(lambda: ws_connect(url, headers), greet)


async def test_xiaozhi_survives_generated_messages_and_framings(fuzz_stack, question) -> None:
    before = await health.snapshot(fuzz_stack)
    doors = {v: door_for(fuzz_stack, v) for v in framing.VERSIONS}

    @FUZZ
    @given(cases(case_for))
    def case(drawn: tuple[int, list[str | bytes]]) -> None:
        version, sent = drawn
        doors[version].send(sent)

    try:
        await asyncio.to_thread(case)
    finally:
        for door in doors.values():
            door.close()
    for version, door in doors.items():
        print(door.report(f"xiaozhi v{version}"))
    assert sum(door.cases for door in doors.values()) >= CASES
    await health.still_serving(fuzz_stack, question, before)
