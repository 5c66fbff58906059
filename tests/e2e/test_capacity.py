"""Capacity end to end on a real nats-server and real services: placement
on the least loaded instance with room, refusal (server_busy) when every
instance is full, a freed slot taken again, and a client flooding audio
held to real time without slowing anyone else down."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from parley.cli.client import GatewayError, ParleyClient
from parley.v1 import gateway_pb2, placement_pb2
from tests.e2e.harness import Stack, start_scripted_stack
from tests.e2e.test_grpc_converse import error_code, refused
from tests.e2e.test_scale_out import Owners
from tests.support.speech import silence, synthesize_speech

pytestmark = pytest.mark.slow

PLACED = ("vad", "asr", "llm", "tts")
TWO_OF_EACH = {"tools": 1, "vad": 2, "asr": 2, "llm": 2, "tts": 2}
CAPACITY_ONE = {f"PARLEY_{stage.upper()}__MAX_SESSIONS": "1" for stage in PLACED}


async def open_or_refusal(url: str) -> ParleyClient | str:
    """A started session, or how it was refused: the HTTP status and body of
    a refused upgrade, or the error event of a refused session."""
    try:
        return await ParleyClient.open(url)
    except InvalidStatus as exc:
        return f"HTTP {exc.response.status_code}: {exc.response.body.decode(errors='replace')}"
    except GatewayError as exc:
        return str(exc)


class Beats:
    """The last heartbeat of each instance."""

    def __init__(self) -> None:
        self.last: dict[str, placement_pb2.Heartbeat] = {}

    async def on_beat(self, msg: Any) -> None:
        beat = placement_pb2.Heartbeat()
        beat.ParseFromString(msg.data)
        self.last[beat.instance_id] = beat


@pytest.fixture(scope="module")
async def twins_of_one(tmp_path_factory: pytest.TempPathFactory):
    async with start_scripted_stack(
        tmp_path_factory.mktemp("capacity"), env=CAPACITY_ONE, services=TWO_OF_EACH
    ) as (stack, _stub):
        yield stack


async def test_capacity_one_spreads_two_refuses_the_third_and_admits_after_one_ends(
    twins_of_one: Stack,
) -> None:
    stack = twins_of_one
    nc = await nats.connect(stack.nats_url)
    owners, beats = Owners(), Beats()
    await nc.subscribe("parley.v1.heartbeat.*", cb=owners.on_beat)
    await nc.subscribe("parley.v1.heartbeat.*", cb=beats.on_beat)
    clients: list[ParleyClient] = []
    try:
        # Three at once: admission is whole per session, so two get every
        # stage and the third is refused (not three each missing a stage).
        results = await asyncio.gather(*(open_or_refusal(stack.gateway_url) for _ in range(3)))
        clients = [r for r in results if isinstance(r, ParleyClient)]
        refusals = [r for r in results if isinstance(r, str)]
        assert len(clients) == 2, results
        assert len(refusals) == 1 and "server_busy" in refusals[0], refusals
        sids = [c.session["session_id"] for c in clients]

        await asyncio.sleep(1.5)  # a heartbeat after the placements
        for stage in PLACED:
            where = [owners.owner(stage, sid) for sid in sids]
            assert None not in where and where[0] != where[1], (stage, where)
        loads = [b for b in beats.last.values() if b.stage in PLACED]
        assert len(loads) == 8
        assert all(b.sessions == 1 and b.capacity == 1 and b.load_ratio >= 1.0 for b in loads)

        # Now the heartbeats say full: refused before the upgrade.
        late = await open_or_refusal(stack.gateway_url)
        assert isinstance(late, str) and late.startswith("HTTP 503") and "server_busy" in late
        # gRPC has no upgrade: its placement refuses.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.grpc_port}") as channel:
            start = gateway_pb2.ConverseRequest.Start(input_sample_rate=16000)
            err = await refused(channel, gateway_pb2.ConverseRequest(start=start))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert error_code(err) == "server_busy"

        # One ends: its slots are free at once on the gateway that held it.
        gone = clients.pop(0)
        await gone.send_json({"type": "session_end"})
        with pytest.raises(GatewayError):  # the gateway closes it once the session is over
            await gone.wait(lambda: None, timeout=10)
        await gone.close()
        # The instances hear the end on the bus a moment later: until then
        # they may still say full, so the admission is tried for a little while.
        deadline = time.monotonic() + 3.0
        while isinstance(fresh := await open_or_refusal(stack.gateway_url), str):
            assert "server_busy" in fresh and time.monotonic() < deadline, fresh
            await asyncio.sleep(0.2)
        clients.append(fresh)
        mark = len(fresh.events)
        await fresh.send_json({"type": "text_input", "text": "Hello?"})
        ended = await fresh.wait_for("response_end", after=mark, timeout=30)
        assert ended["status"] == "completed"
        await fresh.wait_for("tts_end", after=mark, timeout=30)
        await asyncio.sleep(1.5)
        for stage in PLACED:
            assert owners.owner(stage, fresh.session["session_id"]) is not None, stage
    finally:
        for client in clients:
            await client.close()
        await nc.close()


async def attempt(url: str, first: str | None = None, headers: Any = None) -> tuple[str, Any]:
    """Connect (and send `first`); ("503", body) for a refused upgrade,
    ("open", (ws, messages)) when the connection is still up 3 s later (the
    session was admitted), ("closed", (code, reason, messages)) otherwise."""
    try:
        ws = await connect(url, additional_headers=headers, max_size=None)
    except InvalidStatus as exc:
        assert exc.response.status_code == 503, exc
        return "503", exc.response.body.decode(errors="replace")
    messages: list[Any] = []
    try:
        if first is not None:
            await ws.send(first)
        async with asyncio.timeout(3.0):
            async for message in ws:
                messages.append(message)
    except TimeoutError:
        return "open", (ws, messages)
    except ConnectionClosed:
        pass  # a close other than 1000 ends the iteration so
    return "closed", (ws.close_code, ws.close_reason, messages)


async def test_every_protocol_refuses_in_its_own_way(twins_of_one: Stack) -> None:
    """Three at once, capacity for two: the third is refused as its protocol
    says (or, if the heartbeats said full before its upgrade, with 503)."""
    port = twins_of_one.gateway_port
    base = f"ws://127.0.0.1:{port}"
    xiaozhi_hello = json.dumps({"type": "hello", "transport": "websocket"})

    def xiaozhi_headers(i: int) -> dict[str, str]:
        return {"Device-Id": f"aa:bb:cc:00:10:{i:02x}", "Client-Id": f"busy-{i}"}

    protocols: dict[str, list[Any]] = {
        "realtime": [(f"{base}/v1/realtime", None, None) for _ in range(3)],
        "xiaozhi": [(f"{base}/xiaozhi/v1/", xiaozhi_hello, xiaozhi_headers(i)) for i in range(3)],
        # Last: a board that goes keeps its session for a reconnect.
        "echokit": [(f"{base}/ws/busy-board-{i}", None, None) for i in range(3)],
    }
    for name, tries in protocols.items():
        await asyncio.sleep(1.0)  # the last round's sessions gone from the heartbeats
        results = await asyncio.gather(*(attempt(*t) for t in tries))
        kinds = sorted(kind for kind, _ in results)
        try:
            assert kinds.count("open") == 2, (name, results)
            kind, detail = next(r for r in results if r[0] != "open")
            print(f"{name}: refused with {kind}: {detail if kind == '503' else detail[:2]}")
            if kind == "503":
                assert "server_busy" in detail, (name, detail)
                continue
            code, reason, messages = detail
            assert code == 1013, (name, detail)
            texts = [json.loads(m) for m in messages if isinstance(m, str)]
            if name == "realtime":
                errors = [t for t in texts if t["type"] == "error"]
                assert errors and errors[0]["error"]["code"] == "server_busy", texts
            elif name == "xiaozhi":
                alerts = [t for t in texts if t["type"] == "alert"]
                assert alerts and "busy" in alerts[0]["message"], texts
            else:
                assert "busy" in reason, detail
        finally:
            for kind, detail in results:
                if kind == "open":
                    await detail[0].close()


# --- a flood held to real time ------------------------------------------------

QUESTIONS = ("What is the capital of France?", "How many legs does a spider have?")
FLOOD_SPEED = 10
FLOOD_FRAME_MS = 100


@pytest.fixture(scope="module")
async def one_of_each(tmp_path_factory: pytest.TempPathFactory):
    async with start_scripted_stack(tmp_path_factory.mktemp("flood")) as (stack, _stub):
        yield stack


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def first_audio_ms(client: ParleyClient, speech: bytes) -> float:
    """One spoken turn in real time: end of speech -> first answer audio
    sent, as the gateway measured it (turn_metrics)."""
    mark = len(client.events)
    await client.stream(silence(300) + speech + silence(1200))
    metrics = await client.wait_for("turn_metrics", after=mark, timeout=60)
    await client.wait_for("tts_end", after=mark, timeout=60)
    return float(metrics["hops"]["first_audio_sent"])


async def flood(client: ParleyClient, stop: asyncio.Event) -> float:
    """Audio at FLOOD_SPEED times real time until stopped; seconds of audio sent."""
    frame = silence(FLOOD_FRAME_MS)
    period = FLOOD_FRAME_MS / 1000 / FLOOD_SPEED
    began, sent = time.monotonic(), 0
    while not stop.is_set():
        await client.ws.send(frame)
        sent += 1
        await asyncio.sleep(max(0.0, began + sent * period - time.monotonic()))
    return sent * FLOOD_FRAME_MS / 1000


async def test_a_flooding_client_is_throttled_and_others_do_not_slow_down(
    one_of_each: Stack,
) -> None:
    stack = one_of_each
    gateway = next(p for p in stack.processes if p.name == "gateway")
    speech = [await asyncio.to_thread(synthesize_speech, q) for q in QUESTIONS]
    talker = await ParleyClient.open(stack.gateway_url)
    flooder = await ParleyClient.open(stack.gateway_url)
    try:
        await first_audio_ms(talker, speech[0])  # warm-up: first turns are slower
        # Quiet and flooded turns alternate, so the machine's own load (other
        # processes share its cores) weighs on both alike.
        quiet: list[float] = []
        loud: list[float] = []
        sent_s = 0.0
        rss_before = rss_kib(gateway.pid)
        began = time.monotonic()
        for i in range(4):
            quiet.append(await first_audio_ms(talker, speech[i % 2]))
            stop = asyncio.Event()
            flooding = asyncio.create_task(flood(flooder, stop))
            try:
                await asyncio.sleep(0.5)
                loud.append(await first_audio_ms(talker, speech[i % 2]))
            finally:
                stop.set()
                sent_s += await flooding
        span_s = time.monotonic() - began
        rss_after = rss_kib(gateway.pid)
        told = [e for e in flooder.events if e.get("code") == "audio_too_fast"]
        assert told, flooder.events
        # Told at a bounded rate: once, then at most every 5 s.
        assert len(told) <= span_s / 5 + 1, (len(told), span_s)
        assert told[0]["recoverable"] is True
        assert not [e for e in talker.events if e["type"] == "error"], talker.events
        # Memory: the audio beyond 1.5x was dropped, not queued (the floods
        # sent sent_s seconds of audio, 32 KB a second; slack for the rest).
        assert rss_after - rss_before < 16_000, (rss_before, rss_after, sent_s)
        ratio = statistics.median(loud) / statistics.median(quiet)
        print(
            f"first audio quiet {quiet} ms, during a {FLOOD_SPEED}x flood {loud} ms "
            f"(ratio of medians {ratio:.2f}); floods sent {sent_s:.0f} s of audio, "
            f"gateway RSS {rss_before} -> {rss_after} KiB, {len(told)} audio_too_fast"
        )
        assert ratio < 1.5, (quiet, loud)
    finally:
        await talker.close()
        await flooder.close()
