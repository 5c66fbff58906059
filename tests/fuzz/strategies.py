"""Generated input shared by the doors: JSON values of every type, objects
with known and unknown `type`s, session settings with values in and out of
range, deep nesting, huge strings, raw text and bytes.

Hypothesis draws one 64-bit seed a case and a plain random.Random expands
it: a structured message drawn field by field through Hypothesis strategies
cost 4.5 ms a case on the shared two cores (10,000 cases: 45 s for one
door's generation alone), one seed 0.6 ms. A failing case is still replayed
exactly: Hypothesis prints its seed."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from parley.session_settings import SessionSettings

CASES = 10_000
# Every door: 10,000 cases, no per-case deadline (the stack shares two cores),
# no example database (a failure prints its seed; nothing to keep between runs).
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

T = TypeVar("T")
Gen = Callable[[random.Random], Any]

# The session settings every door takes (parley/session_settings.py).
SETTING_KEYS = tuple(SessionSettings.__dataclass_fields__)
# gateway.max_message_bytes: the largest text frame the server reads.
MESSAGE_LIMIT = 1_048_576
# Characters JSON writes as themselves (ensure_ascii=False), of 1 to 4 bytes.
WIDE_CHARS = "a\u00e9\u4e2d\U0001f600"
ODD_CHARS = 'a\u00e9\u4e2d\U0001f600\x00\\"\n\u202e\ud7ff'
MAGIC = (
    b"RIFF\x24\x00\x00\x00WAVEfmt ",
    b"OggS\x00\x02",
    b"ID3\x03",
    b"\xff\xfb\x90",
    b"fLaC",
    b"\x1aE\xdf\xa3",
    b"\x00\x01\x00\x00",
)


def cases(build: Callable[[random.Random], T]) -> st.SearchStrategy[T]:
    """Hypothesis's strategy for what `build` makes of a seeded Random."""
    return st.integers(0, 2**64 - 1).map(lambda seed: build(random.Random(seed)))


def text(rng: random.Random, max_size: int = 40) -> str:
    n = rng.randint(0, max_size)
    pool = string.printable if rng.random() < 0.7 else ODD_CHARS
    return "".join(rng.choice(pool) for _ in range(n))


def integer(rng: random.Random) -> int:
    return rng.choice(
        [0, 1, -1, 2**31, 2**32, 2**63, -(2**63), 2**70, rng.randint(-(10**6), 10**6)]
    )


def scalar(rng: random.Random) -> Any:
    pick = rng.randrange(6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return integer(rng)
    if pick == 3:
        return rng.choice(
            [0.5, -0.0, 1e308, -1e-308, float("nan"), float("inf"), rng.uniform(-1e6, 1e6)]
        )
    return text(rng)


def json_value(rng: random.Random, depth: int = 2) -> Any:
    """Any JSON value, shallow: the wrong type for whatever field it lands in."""
    pick = rng.randrange(8) if depth > 0 else 0
    if pick == 6:
        return [json_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if pick == 7:
        return {text(rng, 8): json_value(rng, depth - 1) for _ in range(rng.randint(0, 3))}
    return scalar(rng)


def huge_string(rng: random.Random, limit: int = MESSAGE_LIMIT) -> str:
    """A string of a few bytes to `limit` bytes (UTF-8) of one character.
    Never past the limit: a frame past the server's max_size fails the
    connection (1009, as it should) but leaves the client's send stuck for
    the server's 10 s close timeout, as the server reads no more of it."""
    size = rng.choice([1, 255, 4096, 65_535, limit // 2, limit - 4096])
    char = rng.choice(WIDE_CHARS)
    return char * (size // len(char.encode()))


def nested(rng: random.Random) -> str:
    """JSON text nested deeper than any reader should follow, valid or cut short."""
    depth = rng.choice([31, 32, 33, 100, 1000, 100_000])
    # Objects only to 1000 deep: '{"a":' a level would make 100,000 half a MB.
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")]) if depth <= 1000 else ("[", "]")
    inner = opener * depth + "1"
    return inner + closer * depth if rng.random() < 0.5 else inner


def one_of(rng: random.Random, *choices: Any) -> Any:
    """One of the choices: a generator (called) or a value."""
    choice = rng.choice(choices)
    return choice(rng) if callable(choice) else choice


def setting_value(rng: random.Random) -> Any:
    return one_of(
        rng,
        json_value,
        lambda r: r.randint(-1, 100_000),
        lambda r: r.uniform(-1, 2),
        "en",
        "fr",
        "",
        "xx-YY",
        "silence",
        "transcript",
        lambda r: [text(r, 8) for _ in range(r.randint(0, 6))],
        lambda r: ["mm-hm"] * r.choice([1, 100, 10_000]),
        lambda r: huge_string(r, 100_000),
    )


def settings_object(rng: random.Random) -> dict[str, Any]:
    """Settings: known keys with values of every type and size (in and out
    of range), unknown keys too."""
    keys = [
        rng.choice(SETTING_KEYS) if rng.random() < 0.85 else text(rng, 12)
        for _ in range(rng.randint(0, 6))
    ]
    return {key: setting_value(rng) for key in keys}


def message(rng: random.Random, types: list[str], fields: dict[str, Gen], tag: str = "type") -> Any:
    """An object with a known or unknown `tag` (its type) and random fields,
    wrong-typed or well-typed; sometimes not an object at all."""
    if rng.random() < 0.05:
        return json_value(rng)
    kind = rng.choice(types) if rng.random() < 0.85 else one_of(rng, text, json_value)
    msg: dict[str, Any] = {tag: kind}
    names = sorted(fields)
    for name in rng.sample(names, rng.randint(0, min(4, len(names)))):
        msg[name] = fields[name](rng) if rng.random() < 0.75 else json_value(rng)
    if rng.random() < 0.1:
        msg.update({text(rng, 8): json_value(rng) for _ in range(rng.randint(1, 3))})
    return msg


def dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True, ensure_ascii=False)


def text_frame(rng: random.Random, structured: Gen, huge_field: str = "text") -> str:
    """The JSON text of a structured message mostly; raw text, bad JSON,
    deep nesting and huge strings the rest of the time."""
    # Frames near the 1 MiB limit one in a hundred: more would make the
    # suite's traffic gigabytes (one in twenty: 1 GB a door).
    pick = rng.randrange(100)
    if pick < 75:
        return dumps(structured(rng))
    if pick < 85:
        return text(rng, 64)
    if pick < 93:
        return nested(rng)
    if pick == 93:
        if rng.random() < 0.5:
            return huge_string(rng)
        msg = structured(rng)
        if isinstance(msg, dict):
            msg[huge_field] = huge_string(rng)
        return dumps(msg)
    return dumps(structured(rng))[: rng.randint(0, 30)]  # cut short


def random_bytes(rng: random.Random, max_size: int = 64) -> bytes:
    return rng.randbytes(rng.randint(0, max_size))


def binary_frame(rng: random.Random) -> bytes:
    """Random bytes, odd lengths, other formats' magic, silence of every size
    (too short, one frame, at and past the frame limit)."""
    pick = rng.randrange(4)
    if pick == 0:
        return random_bytes(rng)
    if pick == 1:
        return rng.randbytes(rng.randrange(1, 4096, 2))
    if pick == 2:
        return rng.choice(MAGIC) + random_bytes(rng, 256)
    if rng.random() < 0.02:  # past the frame limit (64 kB), within max_size
        return bytes(rng.choice([200_000, MESSAGE_LIMIT - 4096]))
    return bytes(rng.choice([0, 2, 320, 640, 1920, 63_998, 64_000, 64_002]))


def within_limit(frame: str) -> str:
    """The frame, or its first bytes' worth when a huge field in a message
    took it past the limit (see huge_string)."""
    if len(frame) * 4 <= MESSAGE_LIMIT or len(frame.encode()) <= MESSAGE_LIMIT:
        return frame
    return frame[: MESSAGE_LIMIT // 4]


def frames(rng: random.Random, text_gen: Gen, binary_gen: Gen = binary_frame) -> list[str | bytes]:
    """One case: one to three frames, text or binary."""
    return [
        within_limit(text_gen(rng)) if rng.random() < 0.6 else binary_gen(rng)
        for _ in range(rng.randint(1, 3))
    ]
