"""Fuzzing the bus: what a stage reads, as anything on the bus could send it.
Random bytes, valid messages of the subject's type with random fields (NaN,
extreme integers, unknown enum values, odd audio of any sample rate), those
cut short or with bytes flipped, and messages of another type, published on
a live session's audio.in, control, vad, asr and llm subjects and sent as
requests on the placement (parley.v1.place.<stage>) and tools (tools.call,
tools.list) subjects. One NATS connection for all of it."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import nats
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import given

from parley.bus import TOOLS_CALL, TOOLS_LIST, place_subject, session_subject
from parley.cli.client import ParleyClient
from parley.placement import SESSION_ID
from parley.v1 import (
    asr_pb2,
    audio_pb2,
    control_pb2,
    llm_pb2,
    placement_pb2,
    tools_pb2,
    vad_pb2,
)
from tests.fuzz import health
from tests.fuzz.strategies import CASES, FUZZ, cases, integer, random_bytes, text

pytestmark = pytest.mark.slow

STREAM_TYPES: dict[str, type[Message]] = {
    "audio.in": audio_pb2.AudioChunk,
    "control": control_pb2.Control,
    "vad": vad_pb2.VadEvent,
    "asr": asr_pb2.Transcript,
    "llm": llm_pb2.LlmEvent,
}
REQUEST_TYPES: dict[str, type[Message]] = {
    **{place_subject(stage): placement_pb2.PlaceRequest for stage in ("vad", "asr", "llm", "tts")},
    TOOLS_CALL: tools_pb2.ToolCallRequest,
    TOOLS_LIST: tools_pb2.ToolListRequest,
}
ALL_TYPES = [*STREAM_TYPES.values(), *REQUEST_TYPES.values()]
INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOATS = [0.0, -1.0, 0.5, 1e38, float("nan"), float("inf"), -float("inf")]


def scalar(rng: random.Random, f: FieldDescriptor) -> Any:
    if f.type in INTS:
        low, high = INTS[f.type]
        return rng.choice([low, high, 0, 1, 16000, max(low, min(high, integer(rng)))])
    if f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice(FLOATS + [rng.uniform(-1e6, 1e6)])
    if f.type == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if f.type == FieldDescriptor.TYPE_STRING:
        return text(rng) if rng.random() < 0.98 else "x" * 100_000
    if f.type == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 3, 320, 1920, 4001]))
    if f.type == FieldDescriptor.TYPE_ENUM:  # open enums: any int32 parses
        return rng.choice([v.number for v in f.enum_type.values] + [99, -1])
    raise AssertionError(f.type)


def fill(rng: random.Random, msg: Message, depth: int = 0) -> Message:
    """Random values in a random subset of the message's fields (one member
    of a oneof wins, as on the wire), nested messages to three levels."""
    for f in msg.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue
        repeated = f.is_repeated
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3 or f.message_type.GetOptions().map_entry:
                continue
            if repeated:
                for _ in range(rng.randint(0, 3)):
                    fill(rng, getattr(msg, f.name).add(), depth + 1)
            else:
                fill(rng, getattr(msg, f.name), depth + 1)
                getattr(msg, f.name).SetInParent()
        elif repeated:
            getattr(msg, f.name).extend(scalar(rng, f) for _ in range(rng.randint(0, 3)))
        else:
            setattr(msg, f.name, scalar(rng, f))
    return msg


def payload(rng: random.Random, kind: type[Message]) -> bytes:
    pick = rng.randrange(6)
    if pick == 0:
        return random_bytes(rng, 512)
    if pick == 1:
        return b""
    other = kind if pick < 4 else rng.choice(ALL_TYPES)
    data = fill(rng, other()).SerializeToString()
    if pick == 3 and data:  # cut short or a byte flipped
        at = rng.randrange(len(data))
        data = (
            data[:at]
            if rng.random() < 0.5
            else data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
        )
    return data


def bus_case(rng: random.Random) -> tuple[str, bytes]:
    """(which subject: a stream of the session, or a request subject), payload."""
    if rng.random() < 0.7:
        stream = rng.choice(sorted(STREAM_TYPES))
        return stream, payload(rng, STREAM_TYPES[stream])
    subject = rng.choice(sorted(REQUEST_TYPES))
    return subject, payload(rng, REQUEST_TYPES[subject])


async def test_every_stage_survives_generated_bus_messages(fuzz_stack, question) -> None:
    before = await health.snapshot(fuzz_stack)
    loop = asyncio.get_running_loop()
    nc = await nats.connect(fuzz_stack.nats_url)
    replies = 0

    async def on_reply(_msg: Any) -> None:
        nonlocal replies
        replies += 1

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_reply)
    client = await ParleyClient.open(fuzz_stack.gateway_url)
    session_id = client.session["session_id"]
    sent = 0

    forged: set[str] = set()

    async def publish(target: str, data: bytes) -> None:
        if target in STREAM_TYPES:
            await nc.publish(session_subject(session_id, target), data)
            return
        await nc.publish(target, data, reply=inbox)
        if REQUEST_TYPES[target] is placement_pb2.PlaceRequest:
            with contextlib.suppress(DecodeError):
                placed = placement_pb2.PlaceRequest.FromString(data).session_id
                if SESSION_ID.fullmatch(placed) and placed != session_id:
                    forged.add(placed)

    @FUZZ
    @given(cases(bus_case))
    def case(drawn: tuple[str, bytes]) -> None:
        nonlocal sent
        asyncio.run_coroutine_threadsafe(publish(*drawn), loop).result()
        sent += 1
        if sent % 200 == 0:  # at the pace the stages take it, not the client's
            asyncio.run_coroutine_threadsafe(nc.flush(), loop).result()

    try:
        await asyncio.to_thread(case)
        # Anything on the bus can place sessions (until the bus is closed to
        # it: docs/security.md), and the forged ones hold capacity for the
        # stages' idle timeout (15 min): end them as their gateway would.
        end = control_pb2.Control(end=control_pb2.SessionEnd()).SerializeToString()
        for forged_id in forged:
            await nc.publish(session_subject(forged_id, "control"), end)
        await nc.flush()
        await asyncio.sleep(2.0)  # a heartbeat or two: the gateway sees the room
    finally:
        await client.close()
        await nc.close()
    print(f"bus: {sent} messages, {replies} replies to requests, {len(forged)} forged sessions")
    assert sent >= CASES
    await health.still_serving(fuzz_stack, question, before)
