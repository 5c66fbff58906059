"""EchoKit's wire format: connection flags, the board's JSON commands and the
server's MessagePack events.

The server events are a Rust enum serialized with `rmp_serde::to_vec`, and the
firmware decodes them with `rmp_serde::from_slice`. That encoding is:
- a unit variant (`HelloStart`, `EndAudio`, ...) is the variant name as a
  MessagePack string;
- a struct variant is a map of one entry, the variant name to an array of its
  fields in declaration order (`to_vec` writes structs as arrays, not maps);
- a `Vec<u8>` field is an array of integers, not `bin` (serde sees a sequence).
msgpack-python packs str, arrays and integers in the same smallest forms rmp
does, so these bytes are identical to the real server's.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

import msgpack

from parley import json_input
from services.gateway.core.errors import ClientError

HELLO_START = msgpack.packb("HelloStart")
HELLO_END = msgpack.packb("HelloEnd")
END_AUDIO = msgpack.packb("EndAudio")
END_RESPONSE = msgpack.packb("EndResponse")
END_VAD = msgpack.packb("EndVad")


def _variant(name: str, *fields: object) -> bytes:
    packed = msgpack.packb({name: list(fields)})
    assert isinstance(packed, bytes)
    return packed


def hello_chunk(data: bytes) -> bytes:
    return _variant("HelloChunk", list(data))


def asr(text: str) -> bytes:
    return _variant("ASR", text)


def start_audio(text: str) -> bytes:
    return _variant("StartAudio", text)


def audio_chunk(data: bytes) -> bytes:
    """PCM16 16 kHz, or one Opus packet when the board asked for opus."""
    return _variant("AudioChunk", list(data))


def audio_chunk_with_vowel(data: bytes, vowel: int) -> bytes:
    """An Opus packet and the mouth shape for the avatar (0 closed, 1-5 a e i o u)."""
    return _variant("AudioChunkWithVowel", list(data), vowel)


FLAGS = ("reconnect", "opus", "vowel", "stream_asr", "record")


@dataclass(frozen=True)
class ConnectFlags:
    """The query flags of /ws/{id}: all default to false."""

    reconnect: bool = False
    opus: bool = False
    vowel: bool = False
    stream_asr: bool = False
    record: bool = False


def parse_flags(query: str) -> ConnectFlags:
    """Like serde's query parsing: `true` or `false` only; other keys ignored."""
    values: dict[str, bool] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in FLAGS:
            if value not in ("true", "false"):
                raise ValueError(f"query flag {key} must be true or false, not {value!r}")
            values[key] = value == "true"
    return ConnectFlags(**values)


@dataclass(frozen=True)
class Command:
    """A client command: {"event": "StartChat"}, {"event": "Text", "input": ...}."""

    event: str
    input: str = ""
    index: int = 0


COMMANDS = ("StartRecord", "StartChat", "Submit", "Text", "Select")


def parse_command(text: str) -> Command:
    """One text frame, as serde reads the internally tagged ClientCommand
    (unknown fields ignored); ClientError("bad_command") otherwise."""
    try:
        msg = json_input.loads(text)
    except json_input.BadJson:
        raise ClientError("bad_command", f"text frame is not JSON: {text[:80]!r}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
        raise ClientError("bad_command", "a command is a JSON object with a string 'event'")
    event = msg["event"]
    if event not in COMMANDS:
        raise ClientError("bad_command", f"unknown command {event!r}")
    if event == "Text":
        value = msg.get("input")
        if not isinstance(value, str):
            raise ClientError("bad_command", "Text needs a string 'input'")
        return Command(event, input=value)
    if event == "Select":
        index = msg.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ClientError("bad_command", "Select needs a non-negative integer 'index'")
        return Command(event, index=index)
    return Command(event)
