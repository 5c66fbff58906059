"""Fuzzing the Parley WebSocket (/v1/ws): JSON text frames (known and unknown
types, wrong-typed fields, settings out of range, deep nesting, strings up to
the message limit, raw text) and binary frames (random bytes, odd lengths,
other formats' magic headers, silence of every size)."""

from __future__ import annotations

import random

import pytest

from tests.fuzz.strategies import (
    Gen,
    frames,
    integer,
    json_value,
    message,
    settings_object,
    text,
    text_frame,
)
from tests.fuzz.wsdoor import fuzz_one_door

pytestmark = pytest.mark.slow

# gateway.max_message_bytes: the largest text frame the server reads.
TYPES = [
    "settings_update",
    "text_input",
    "commit",
    "interrupt",
    "playback_mark",
    "ping",
    "session_resume",
    "session_start",
]
# session_end ends the connection, and a new one places a session on every
# stage: one in a hundred messages (one in nine had the run reconnect every
# dozen cases, 80 s for 10,000).
# text_input and commit start a turn (commit: Whisper on the audio so far),
# the models' work and not the door's: as rare (see test_echokit's Submit).
TYPES = [t for t in TYPES if t not in ("text_input", "commit")] * 16 + [
    "session_end",
    "text_input",
    "commit",
]
FIELDS: dict[str, Gen] = {
    "settings": settings_object,
    "input_sample_rate": lambda r: r.choice([0, 8000, 12345, 16000, 24000, 48000, -1, 2**40]),
    "output_sample_rate": lambda r: r.choice([0, 8000, 16000, 22050, 24000, 48000, 7]),
    "text": text,
    "session_id": text,
    "resume_token": text,
    "mark": json_value,
    "played_ms": integer,
    "response_id": text,
}


def case_frames(rng: random.Random) -> list[str | bytes]:
    return frames(rng, lambda r: text_frame(r, lambda r2: message(r2, TYPES, FIELDS)))


async def test_parley_ws_survives_generated_frames(fuzz_stack, question) -> None:
    await fuzz_one_door(fuzz_stack, question, fuzz_stack.gateway_url, case_frames, "parley ws")
