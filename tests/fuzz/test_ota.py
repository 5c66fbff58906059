"""Fuzzing the Xiaozhi OTA endpoint (POST and GET /xiaozhi/ota/): random
headers (Device-Id, Client-Id, Activation-Version, User-Agent, unknown ones,
odd and long values), bodies (the firmware's system info with random
fields, other JSON, bad JSON, deep nesting, bytes), query strings; over one
kept-alive HTTP connection, and now and then a malformed request of raw
bytes on a socket of its own."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import string
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given

from tests.fuzz import health
from tests.fuzz.strategies import (
    CASES,
    FUZZ,
    cases,
    dumps,
    json_value,
    nested,
    one_of,
    random_bytes,
    text,
)

pytestmark = pytest.mark.slow

PATHS = ["/xiaozhi/ota/", "/xiaozhi/ota", "/xiaozhi/ota//", "/xiaozhi/ota/%00", "/xiaozhi/ota/x"]
HEADER_NAMES = [
    "Device-Id",
    "Client-Id",
    "Activation-Version",
    "User-Agent",
    "Accept-Language",
    "Content-Type",
    "Authorization",
    "X-Fuzz",
]
# Header values h11 lets through: visible ASCII and spaces (no CR, LF, NUL).
VALUE_CHARS = string.ascii_letters + string.digits + string.punctuation + " "


def header_value(rng: random.Random) -> str:
    size = rng.choice([0, 1, 17, 64, 128, 129, 4000])
    value = "".join(rng.choice(VALUE_CHARS) for _ in range(min(size, 64))) * max(1, size // 64)
    return value.strip()  # h11 refuses a value with whitespace at either end


def system_info(rng: random.Random) -> Any:
    info = {
        "version": one_of(rng, 2, json_value),
        "flash_size": one_of(rng, 16777216, json_value),
        "mac_address": one_of(rng, text, json_value),
        "chip_model_name": one_of(rng, "esp32s3", json_value),
        "application": one_of(
            rng,
            json_value,
            lambda r: {"name": "xiaozhi", "version": one_of(r, "1.6.0", text, json_value)},
        ),
        "board": one_of(rng, json_value, {"type": "bread-compact-wifi"}),
    }
    return {k: v for k, v in info.items() if rng.random() < 0.7}


def body(rng: random.Random) -> bytes:
    pick = rng.randrange(8)
    if pick < 4:
        return dumps(system_info(rng)).encode()
    if pick == 4:
        return dumps(json_value(rng)).encode()
    if pick == 5:
        return nested(rng).encode()
    if pick == 6:
        return random_bytes(rng, 512)
    return b""


def request(rng: random.Random) -> dict[str, Any]:
    headers = {}
    if rng.random() < 0.85:
        headers["Device-Id"] = (
            rng.choice(["aa:bb:cc:dd:ee:ff", "fuzz-ota"])
            if rng.random() < 0.5
            else header_value(rng)
        )
    for name in rng.sample(HEADER_NAMES, rng.randint(0, 4)):
        headers[name] = header_value(rng)
    query = rng.choice(
        ["", "?device-id=fuzz", "?device-id=", f"?{quote(text(rng, 12), safe='=&')}"]
    )
    return {
        "method": rng.choice(["POST", "POST", "GET"]),
        "path": rng.choice(PATHS) + query,
        "headers": headers,
        "body": body(rng),
        "raw": rng.random() < 0.03,
    }


def raw_request(rng: random.Random, case: dict[str, Any]) -> bytes:
    """What no HTTP client would send: wrong lengths, bad lines, junk."""
    head = f"{case['method']} {case['path']} HTTP/1.1\r\nHost: fuzz\r\n".encode()
    return rng.choice(
        [
            head + b"Content-Length: 100\r\n\r\n" + case["body"][:10],
            head + b"Content-Length: -1\r\n\r\n",
            head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            head + b"Device-Id: \xff\xfe\r\n\r\n",
            random_bytes(rng, 300),
            b"POST /xiaozhi/ota/ HTTP/9.9\r\n\r\n",
        ]
    )


def send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass


async def test_ota_survives_generated_requests(fuzz_stack, question) -> None:
    before = await health.snapshot(fuzz_stack)
    base = f"http://127.0.0.1:{fuzz_stack.http_port}"
    statuses: dict[int, int] = {}
    raw_sent = 0
    client = httpx.Client(base_url=base, timeout=10)

    def build(rng: random.Random) -> tuple[dict[str, Any], bytes]:
        case = request(rng)
        return case, raw_request(rng, case) if case["raw"] else b""

    @FUZZ
    @given(cases(build))
    def case(drawn: tuple[dict[str, Any], bytes]) -> None:
        nonlocal raw_sent
        req, raw = drawn
        if raw:
            send_raw(fuzz_stack.http_port, raw)
            raw_sent += 1
            return
        reply = client.request(
            req["method"], req["path"], headers=req["headers"], content=req["body"]
        )
        statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
        assert reply.status_code < 500, (reply.status_code, reply.text[:200])
        if reply.status_code == 200:
            assert "token" in json.loads(reply.text)["websocket"]

    try:
        await asyncio.to_thread(case)
    finally:
        await asyncio.to_thread(client.close)
    sent = sum(statuses.values())
    print(f"ota: {sent} HTTP requests, {raw_sent} raw, statuses {statuses}")
    assert sent + raw_sent >= CASES
    await health.still_serving(fuzz_stack, question, before)
