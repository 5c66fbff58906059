"""Two instances of each stateful stage: sessions spread across them, do not
mix, and survive the loss of the instance that owned them."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict

import nats
import pytest

from parley.cli.client import ParleyClient
from parley.v1 import placement_pb2
from tests.e2e.harness import start_stack
from tests.e2e.test_pipeline import ask, words

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("What is the capital of France?", "france"),
    ("How many legs does a spider have?", "spider"),
    ("What color is a banana?", "banana"),
    ("Why is the ocean salty?", "ocean"),
]


class Owners:
    """Which instance holds which session, from the instances' heartbeats."""

    def __init__(self) -> None:
        self.sessions: dict[str, set[str]] = defaultdict(set)
        self.seen: dict[str, float] = {}

    async def on_beat(self, msg: nats.aio.msg.Msg) -> None:
        beat = placement_pb2.Heartbeat()
        beat.ParseFromString(msg.data)
        self.sessions[beat.instance_id] = set(beat.session_ids)
        self.seen[beat.instance_id] = time.monotonic()

    def owner(self, stage: str, session_id: str) -> str | None:
        """The live instance (heard from in the last 2.5 s) holding the session."""
        for instance, sessions in self.sessions.items():
            alive = time.monotonic() - self.seen[instance] < 2.5
            if alive and instance.startswith(f"{stage}-") and session_id in sessions:
                return instance
        return None


@pytest.fixture(scope="module")
async def twin_stack(tmp_path_factory: pytest.TempPathFactory):
    async with start_stack(
        tmp_path_factory.mktemp("twins"),
        services={"tools": 1, "vad": 2, "asr": 2, "llm": 2, "tts": 2},
    ) as running:
        yield running


async def test_sessions_spread_over_two_instances_and_do_not_mix(twin_stack) -> None:
    nc = await nats.connect(twin_stack.nats_url)
    owners = Owners()
    await nc.subscribe("parley.v1.heartbeat.*", cb=owners.on_beat)
    clients = await asyncio.gather(*(ParleyClient.open(twin_stack.gateway_url) for _ in QUESTIONS))
    try:
        turns = await asyncio.gather(
            *(ask(c, q) for c, (q, _) in zip(clients, QUESTIONS, strict=True))
        )
        for turn, (_, key) in zip(turns, QUESTIONS, strict=True):
            heard = words(turn["transcript"])
            assert key in heard, turn["transcript"]
            others = {k for _, k in QUESTIONS if k != key}
            assert not heard & others, turn["transcript"]
            assert turn["ended"]["status"] == "completed"
        for client in clients:
            assert client.audio
        await asyncio.sleep(1.5)  # a heartbeat after the last placement
        spread = {
            stage: {owners.owner(stage, c.session["session_id"]) for c in clients}
            for stage in ("vad", "asr", "llm", "tts")
        }
        assert all(None not in instances for instances in spread.values()), spread
        assert any(len(instances) == 2 for instances in spread.values()), spread
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        await nc.close()


async def test_conversation_goes_on_when_its_instances_go_away(twin_stack) -> None:
    nc = await nats.connect(twin_stack.nats_url)
    owners = Owners()
    await nc.subscribe("parley.v1.heartbeat.*", cb=owners.on_beat)
    client = await ParleyClient.open(twin_stack.gateway_url)
    try:
        sid = client.session["session_id"]
        await client.send_json({"type": "text_input", "text": "Hello there."})
        first = await client.wait_for("response_start", timeout=60)
        await client.wait_for("tts_end", response_id=first["response_id"], timeout=90)
        await asyncio.sleep(1.5)
        llm_owner, tts_owner = owners.owner("llm", sid), owners.owner("tts", sid)
        assert llm_owner and tts_owner
        by_instance = {}
        for process in twin_stack.processes:
            log = process.log.read_text(errors="replace")
            for instance in (llm_owner, tts_owner):
                if f"instance={instance}" in log:
                    by_instance[instance] = process
        # The llm owner dies without a word; the tts owner drains politely.
        by_instance[llm_owner].proc.send_signal(signal.SIGKILL)
        by_instance[tts_owner].proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(5)  # three missed heartbeats, then placed again
        mark = len(client.events)
        await client.send_json({"type": "text_input", "text": "Are you still there?"})
        again = await client.wait_for("response_start", after=mark, timeout=60)
        await client.wait_for("tts_end", after=mark, response_id=again["response_id"], timeout=90)
        assert owners.owner("llm", sid) not in (None, llm_owner)
        assert owners.owner("tts", sid) not in (None, tts_owner)
    finally:
        await client.close()
        await nc.close()
