"""The Parley protocol client shared by `parley talk`, `parley bench` and the
tests, against a real WebSocket server on loopback playing a gateway's part
(session_started, settings, a recorded uplink): no stack, no models."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from parley.cli.client import (
    FRAME_MS,
    GatewayError,
    Microphone,
    ParleyClient,
    open_session,
    paced,
)

RATE = 16000
FRAME_BYTES = RATE * 2 * FRAME_MS // 1000


@dataclass
class FakeGateway:
    """Answers like the gateway's /v1/ws: session_started, settings_updated,
    a little answer audio on text_input; records what the client sent."""

    url: str = ""
    received: list[str | bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"type": "session_started", "session_id": "s1"}))
        async for message in ws:
            self.received.append(message)
            self.arrivals.append(time.monotonic())
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            if event["type"] == "settings_update":
                await ws.send(json.dumps({"type": "settings_updated", "output_sample_rate": 24000}))
            elif event["type"] == "text_input":
                await ws.send(json.dumps({"type": "tts_start", "response_id": "r1"}))
                await ws.send(bytes(960))
                await ws.send(json.dumps({"type": "tts_end", "response_id": "r1"}))
            elif event["type"] == "hang_up":
                await ws.close()

    def refuse_other_paths(self, ws: ServerConnection, request: Request) -> Response | None:
        if request.path != "/v1/ws":
            return ws.respond(HTTPStatus.NOT_FOUND, "no such endpoint\n")
        return None


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    async with serve(fake.handle, "127.0.0.1", 0, process_request=fake.refuse_other_paths) as srv:
        port = next(iter(srv.sockets)).getsockname()[1]
        fake.url = f"ws://127.0.0.1:{port}/v1/ws"
        yield fake


async def test_events_are_recorded_as_sent_with_their_arrival_times(gateway: FakeGateway) -> None:
    client = await ParleyClient.open(gateway.url)
    try:
        assert client.session["session_id"] == "s1"
        before = time.monotonic()
        await client.send_json({"type": "text_input", "text": "Hi."})
        ended = await client.wait_for("tts_end", response_id="r1", timeout=5)
        assert ended == {"type": "tts_end", "response_id": "r1"}  # nothing added to it
        assert before <= client.arrived_at(ended) <= time.monotonic()
        assert [e["type"] for e in client.of_type("tts_start")] == ["tts_start"]
        assert bytes(client.audio) == bytes(960) and [n for _, n in client.frames] == [960]
        assert client.first_audio_at is not None

        reply = await client.update_settings({"settings": {"silence_ms": 700}})
        assert reply["type"] == "settings_updated" and client.output_rate == 24000
        sent = json.loads(gateway.received[-1])
        assert sent == {"settings": {"silence_ms": 700}, "type": "settings_update"}
    finally:
        await client.close()
    # A polite close ends the session before the socket.
    async with asyncio.timeout(5):
        while json.loads(gateway.received[-1])["type"] != "session_end":
            await asyncio.sleep(0.01)


async def test_waiting_on_a_connection_that_ends_says_so(gateway: FakeGateway) -> None:
    client = await ParleyClient.open(gateway.url)
    try:
        await client.send_json({"type": "hang_up"})
        with pytest.raises(GatewayError, match="closed the connection.*before response_end"):
            await client.wait_for("response_end", timeout=5)
    finally:
        await client.close()


async def test_stream_paces_frames_in_real_time(gateway: FakeGateway) -> None:
    client = await ParleyClient.open(gateway.url)
    try:
        pcm = bytes(FRAME_BYTES * 10 + 100)  # ten whole frames and a short one
        began = time.monotonic()
        ended = await client.stream(pcm)
        # It returns once the audio's own duration has passed, not sooner.
        assert ended - began >= 11 * FRAME_MS / 1000 - 0.005
        async with asyncio.timeout(5):
            while sum(isinstance(m, bytes) for m in gateway.received) < 11:
                await asyncio.sleep(0.01)
        frames = [m for m in gateway.received if isinstance(m, bytes)]
        assert [len(f) for f in frames] == [FRAME_BYTES] * 10 + [100]
    finally:
        await client.close()


async def test_the_microphone_sends_whole_frames_then_silence(gateway: FakeGateway) -> None:
    client = await ParleyClient.open(gateway.url)
    mic = Microphone(client.ws, RATE)
    try:
        sent = await mic.play(b"\x01\x00" * (FRAME_BYTES // 2 * 3 + 5))  # 3 frames and 10 bytes
        assert len(sent) == 4 and sent == sorted(sent)
        await asyncio.sleep(0.1)  # still streaming: silence after the clip
    finally:
        await mic.stop()
        await client.close()
    frames = [m for m in gateway.received if isinstance(m, bytes)]
    assert all(len(f) == FRAME_BYTES for f in frames) and len(frames) >= 6
    assert frames[3] == b"\x01\x00" * 5 + bytes(FRAME_BYTES - 10)  # the last one padded
    assert set(frames[4]) == {0}


async def test_paced_keeps_to_its_schedule() -> None:
    began = time.monotonic()
    seen = []
    async for n in paced(range(5), 20):
        seen.append((n, time.monotonic() - began))
        if n == 1:
            await asyncio.sleep(0.03)  # one slow send: made up for, not carried on
    took = time.monotonic() - began
    assert [n for n, _ in seen] == [0, 1, 2, 3, 4]
    # Item 4 is due at 80 ms; had the 30 ms been carried on, it would be at 110.
    assert 0.078 <= seen[4][1] < 0.1, seen
    assert 0.098 <= took < 0.125, took


async def test_refusals_raise_what_websockets_raises_or_a_clear_error(
    gateway: FakeGateway,
) -> None:
    wrong_path = gateway.url.replace("/v1/ws", "/nope")
    with pytest.raises(InvalidStatus) as refused:
        await ParleyClient.open(wrong_path)
    assert refused.value.response.status_code == 404
    with pytest.raises(GatewayError, match="refused the connection: HTTP 404"):
        await open_session(wrong_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GatewayError, match="cannot connect"):
        await open_session(f"ws://127.0.0.1:{port}/v1/ws")
    with pytest.raises(GatewayError, match="not a WebSocket URL"):
        await open_session("http://127.0.0.1/v1/ws")
