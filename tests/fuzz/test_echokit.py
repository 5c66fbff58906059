"""Fuzzing EchoKit (/ws/<id>): the board's JSON commands (known and unknown
events, wrong-typed input and index, raw text, deep nesting) and binary
frames (PCM16 of odd sizes, random bytes, magic headers)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from services.gateway.protocols.echokit import wire
from tests.fuzz.strategies import (
    Gen,
    frames,
    json_value,
    message,
    text,
    text_frame,
)
from tests.fuzz.wsdoor import fuzz_one_door

pytestmark = pytest.mark.slow

FIELDS: dict[str, Gen] = {
    "input": text,
    "index": lambda r: r.choice([-2, -1, 0, 1, 5, 2**40, 1.5, True]),
    "extra": json_value,
}


# Text and Submit start a turn (Submit: Whisper on what the board sent), the
# models' work and not the door's: one command in fifty each, or 10,000
# cases took 5 min (one in five).
COMMANDS = [c for c in wire.COMMANDS if c not in ("Text", "Submit")] * 16 + ["Text", "Submit"]


def command(rng: random.Random) -> Any:
    return message(rng, COMMANDS, FIELDS, tag="event")


def case_frames(rng: random.Random) -> list[str | bytes]:
    return frames(rng, lambda r: text_frame(r, command, huge_field="input"))


async def test_echokit_survives_generated_commands_and_frames(fuzz_stack, question) -> None:
    await fuzz_one_door(
        fuzz_stack,
        question,
        f"ws://127.0.0.1:{fuzz_stack.gateway_port}/ws/fuzz-board",
        case_frames,
        "echokit",
    )
