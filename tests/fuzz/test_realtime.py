"""Fuzzing the OpenAI Realtime door (/v1/realtime): client events with
random fields, session.update with random configurations (formats, turn
detection, tools, Parley's own settings), input_audio_buffer.append with
random base64 (valid, odd-sized, not base64 at all), conversation items."""

from __future__ import annotations

import base64
import random
from typing import Any

import pytest

from tests.fuzz.strategies import (
    Gen,
    frames,
    integer,
    json_value,
    message,
    one_of,
    settings_object,
    text,
    text_frame,
)
from tests.fuzz.wsdoor import fuzz_one_door

pytestmark = pytest.mark.slow

TYPES = [
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
]
FORMATS = ["pcm16", "g711_ulaw", "g711_alaw", "mp3", ""]


def audio_format(rng: random.Random) -> Any:
    return one_of(
        rng,
        lambda r: r.choice(FORMATS),
        lambda r: {
            "type": r.choice(["audio/pcm", "audio/pcmu", "audio/pcma", "x"]),
            "rate": one_of(r, 24000, 16000, 0, integer),
        },
        json_value,
    )


def turn_detection(rng: random.Random) -> Any:
    return one_of(
        rng,
        None,
        json_value,
        lambda r: {
            "type": r.choice(["server_vad", "semantic_vad", "none", "x"]),
            "threshold": one_of(r, 0.5, -1.0, 2.0, json_value),
            "prefix_padding_ms": one_of(r, 300, -1, integer),
            "silence_duration_ms": one_of(r, 500, 0, 10**9, json_value),
            "create_response": one_of(r, True, False, json_value),
            "interrupt_response": one_of(r, True, json_value),
            "eagerness": one_of(r, "low", "medium", "high", "auto", text),
            "idle_timeout_ms": one_of(r, None, 5000, integer),
        },
    )


def tool(rng: random.Random) -> Any:
    return {
        "type": one_of(rng, "function", text),
        "name": one_of(rng, text, json_value),
        "description": one_of(rng, text, lambda r: "d" * r.choice([10, 100_000])),
        "parameters": one_of(rng, json_value, {"type": "object", "properties": {}}),
    }


def session_config(rng: random.Random) -> Any:
    config = {
        "modalities": one_of(rng, ["audio", "text"], ["text"], json_value),
        "output_modalities": one_of(rng, ["audio"], ["text"], json_value),
        "instructions": one_of(rng, text, json_value, lambda r: "i" * r.choice([10, 200_000])),
        "voice": one_of(rng, "alloy", text, json_value),
        "input_audio_format": audio_format(rng),
        "output_audio_format": audio_format(rng),
        "input_audio_transcription": one_of(rng, None, {"model": "whisper-1"}, json_value),
        "turn_detection": turn_detection(rng),
        "tools": one_of(rng, lambda r: [tool(r) for _ in range(r.randint(0, 3))], json_value),
        "tool_choice": one_of(rng, "auto", "none", "required", json_value),
        "temperature": one_of(rng, 0.8, -1.0, 5.0, json_value),
        "max_response_output_tokens": one_of(rng, "inf", 100, -1, json_value),
        "audio": one_of(
            rng,
            json_value,
            lambda r: {
                "input": {"format": audio_format(r), "turn_detection": turn_detection(r)},
                "output": {
                    "format": audio_format(r),
                    "voice": text(r),
                    "speed": one_of(r, 1.0, 0.0, 100.0),
                },
            },
        ),
        "parley": settings_object(rng),
    }
    return {k: v for k, v in config.items() if rng.random() < 0.3}


def base64_audio(rng: random.Random) -> Any:
    pick = rng.randrange(5)
    pcm = rng.randbytes(rng.choice([0, 1, 2, 480, 4800, 9601]))
    if pick == 0:
        return text(rng)  # not base64
    if pick == 1:
        return base64.b64encode(pcm).decode()[:-1]  # bad padding
    if pick == 2:
        return json_value(rng)
    return base64.b64encode(pcm).decode()


def item(rng: random.Random) -> Any:
    return {
        "id": one_of(rng, text, json_value),
        "type": one_of(rng, "message", "function_call", "function_call_output", text),
        "role": one_of(rng, "user", "assistant", "system", text),
        "content": one_of(
            rng,
            json_value,
            lambda r: [
                {
                    "type": r.choice(["input_text", "input_audio", "text", "audio"]),
                    "text": text(r),
                    "audio": base64_audio(r),
                }
            ],
        ),
        "call_id": text(rng),
        "output": one_of(rng, text, json_value),
    }


FIELDS: dict[str, Gen] = {
    "event_id": text,
    "session": session_config,
    "audio": base64_audio,
    "item": item,
    "item_id": text,
    "previous_item_id": text,
    "content_index": integer,
    "audio_end_ms": integer,
    "response": lambda r: one_of(r, json_value, session_config),
    "response_id": text,
}


# Turns (a commit: Whisper on the buffer; response.create: an answer) are
# the models' work, not the door's: one event in fifty each (see test_echokit).
TURNS = ("input_audio_buffer.commit", "response.create", "conversation.item.create")
WEIGHTED = [t for t in TYPES if t not in TURNS] * 16 + list(TURNS)


def realtime_event(rng: random.Random) -> Any:
    return message(rng, WEIGHTED, FIELDS)


def case_frames(rng: random.Random) -> list[str | bytes]:
    return frames(rng, lambda r: text_frame(r, realtime_event, huge_field="audio"))


async def test_realtime_survives_generated_client_events(fuzz_stack, question) -> None:
    await fuzz_one_door(
        fuzz_stack,
        question,
        f"ws://127.0.0.1:{fuzz_stack.gateway_port}/v1/realtime",
        case_frames,
        "realtime",
    )
