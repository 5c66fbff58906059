"""A session outlives the stage instances that serve it: two instances of
every stage, the session's owner SIGKILLed, and the conversation goes on on
the other one — the history whole (the llm's, from JetStream KV), turn ids
rising, speech transcribed — and an answer cut by its llm's death ends
`failed` instead of leaving the session stuck.

The llm is the OpenAI stand-in that answers with the number of user messages
it was given, so the history's length is readable in every answer."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from parley.cli.client import ParleyClient
from parley.v1 import placement_pb2
from tests.e2e.harness import Stack, start_stack
from tests.e2e.test_pipeline import ask, words
from tests.support.openai_chat_stub import ChatReply, OpenAIChatStub, count_user_messages
from tests.support.stack import Running, start_service

pytestmark = pytest.mark.slow

TWO_OF_EACH = {"tools": 1, "vad": 2, "asr": 2, "llm": 2, "tts": 2}
# Placement's horizon is 0.75 s; re-placement is looked for this long.
REPLACED_WITHIN_S = 10.0


class Owners:
    """Which instance holds which session, from the instances' heartbeats;
    and the longest gap between two heartbeats of one instance, by the
    sender's clock (ts_ms): how long a stage's loop went without beating."""

    def __init__(self) -> None:
        self.sessions: dict[str, set[str]] = defaultdict(set)
        self.seen: dict[str, float] = {}
        self.sent: dict[str, float] = {}
        self.gaps: dict[str, float] = defaultdict(float)
        self.dead: set[str] = set()

    async def on_beat(self, msg: Msg) -> None:
        beat = placement_pb2.Heartbeat()
        beat.ParseFromString(msg.data)
        last = self.sent.get(beat.instance_id)
        if last is not None:
            gap = (beat.ts_ms - last) / 1000
            self.gaps[beat.instance_id] = max(self.gaps[beat.instance_id], gap)
        self.sent[beat.instance_id] = beat.ts_ms
        self.sessions[beat.instance_id] = set(beat.session_ids)
        self.seen[beat.instance_id] = time.monotonic()

    def owner(self, stage: str, session_id: str) -> str | None:
        for instance, sessions in self.sessions.items():
            alive = instance not in self.dead and time.monotonic() - self.seen[instance] < 1.0
            if alive and instance.startswith(f"{stage}-") and session_id in sessions:
                return instance
        return None

    async def replaced(self, stage: str, session_id: str, old: str) -> str:
        deadline = time.monotonic() + REPLACED_WITHIN_S
        while time.monotonic() < deadline:
            new = self.owner(stage, session_id)
            if new is not None and new != old:
                return new
            await asyncio.sleep(0.05)
        raise AssertionError(f"{stage} of {session_id} not taken over within {REPLACED_WITHIN_S} s")


@dataclass
class Twins:
    stack: Stack
    stub: OpenAIChatStub
    owners: Owners
    env: dict[str, str]
    workdir: Path

    async def kill_owner(self, stage: str, session_id: str) -> str:
        """SIGKILL the session's owner of that stage, start a fresh instance in
        its place (two again for the next test), and wait for the session to
        be taken over; returns the new owner."""
        owner = await self.wait_owner(stage, session_id)
        victim = next(
            p
            for p in self.stack.processes
            if p.returncode is None and f"instance={owner}" in p.text()
        )
        os.kill(victim.pid, signal.SIGKILL)
        await victim.proc.wait()
        self.owners.dead.add(owner)
        new = await self.owners.replaced(stage, session_id, owner)
        fresh: Running = await start_service(stage, self.env, self.workdir)
        self.stack.processes.append(fresh)
        return new

    async def wait_owner(self, stage: str, session_id: str) -> str:
        for _ in range(40):
            owner = self.owners.owner(stage, session_id)
            if owner is not None:
                return owner
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {stage} owner of {session_id}")


@pytest.fixture(scope="module")
async def twins(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Twins]:
    workdir = tmp_path_factory.mktemp("failover")
    async with OpenAIChatStub(answer=count_user_messages) as stub:
        llm = {"PARLEY_LLM__PROVIDER": "openai", "PARLEY_LLM__BASE_URL": stub.base_url}
        async with start_stack(workdir, services=TWO_OF_EACH, env=llm) as stack:
            nc = await nats.connect(stack.nats_url)
            owners = Owners()
            await nc.subscribe("parley.v1.heartbeat.*", cb=owners.on_beat)
            env = {"PARLEY_NATS__URL": stack.nats_url, **llm}
            # Gaps from here on: at start-up every process competes for the
            # cores at once (gaps of 4 s seen then, the gateway's loop as late).
            await asyncio.sleep(1.0)
            owners.gaps.clear()
            try:
                yield Twins(stack, stub, owners, env, workdir)
            finally:
                # Measured, not asserted: what the 0.75 s placement horizon
                # has to stay above (docs/architecture.md, Placement).
                gaps = {i: round(g, 3) for i, g in sorted(owners.gaps.items())}
                print(f"longest gaps between heartbeats (s): {gaps}")
                await nc.close()


async def typed(client: ParleyClient, text: str) -> dict:
    mark = len(client.events)
    await client.send_json({"type": "text_input", "text": text})
    return await client.wait_for("response_end", after=mark, timeout=30)


async def test_idle_llm_owner_killed_history_goes_on(twins: Twins) -> None:
    client = await ParleyClient.open(twins.stack.gateway_url)
    try:
        sid = client.session["session_id"]
        assert (await typed(client, "Hello there."))["text"] == "You have asked 1 questions."
        spoken = await ask(client, "What is the capital of France?")
        assert "asked 2 questions" in spoken["text"], spoken
        await twins.kill_owner("llm", sid)
        # The new owner read the history from JetStream KV: the count goes on.
        again = await typed(client, "Are you still there?")
        assert again["status"] == "completed"
        assert again["text"] == "You have asked 3 questions.", [
            [m["content"] for m in b["messages"] if m["role"] == "user"] for b in twins.stub.bodies
        ]
        spoken = await ask(client, "How many legs does a spider have?")
        assert "spider" in words(spoken["transcript"])
        assert "asked 4 questions" in spoken["text"], spoken
    finally:
        await client.close()


async def test_llm_killed_mid_answer_ends_it_failed_and_the_session_goes_on(
    twins: Twins,
) -> None:
    client = await ParleyClient.open(twins.stack.gateway_url)
    try:
        sid = client.session["session_id"]
        # Half duplex: a turn spoken over a "speaking" agent would be dismissed,
        # so a response left hanging would swallow every later turn.
        updated = await client.update_settings({"settings": {"barge_in": False}})
        assert updated["type"] == "settings_updated", updated
        assert (await typed(client, "Hello."))["text"] == "You have asked 1 questions."
        # A slow answer: a word every 0.3 s, long enough to die in the middle.
        twins.stub.replies.append(ChatReply(script=["Let", " me"] + [" think"] * 60, delay_s=0.3))
        mark = len(client.events)
        await client.send_json({"type": "text_input", "text": "Tell me a long story."})
        started = await client.wait_for("response_start", after=mark, timeout=30)
        rid = started["response_id"]
        await client.wait_for("response_text", after=mark, response_id=rid, timeout=30)
        owner = await twins.wait_owner("llm", sid)
        await twins.kill_owner("llm", sid)
        error = await client.wait_for("error", after=mark, code="stage_failed", timeout=10)
        assert error["stage"] == "llm"
        ended = await client.wait_for("response_end", after=mark, response_id=rid, timeout=10)
        assert ended["status"] == "failed"
        assert twins.owners.owner("llm", sid) not in (None, owner)
        # The history holds the question that was being answered (it was
        # stored when its answer began) and everything before it.
        spoken = await ask(client, "What color is a banana?")
        assert "banana" in words(spoken["transcript"])
        assert "asked 3 questions" in spoken["text"], spoken
        assert spoken["ended"]["status"] == "completed"
    finally:
        await client.close()


@pytest.mark.parametrize("stage", ["vad", "asr"])
async def test_idle_listening_owner_killed_next_question_is_heard(twins: Twins, stage: str) -> None:
    client = await ParleyClient.open(twins.stack.gateway_url)
    try:
        sid = client.session["session_id"]
        first = await ask(client, "What is the capital of France?")
        assert {"capital", "france"} <= words(first["transcript"])
        last_turn = max(e["turn_id"] for e in client.of_type("user_speech_start"))
        await twins.kill_owner(stage, sid)
        mark = len(client.events)
        again = await ask(client, "Why is the ocean salty?")
        assert {"ocean", "salty"} <= words(again["transcript"]), again
        assert "asked 2 questions" in again["text"], again
        turns = {e["turn_id"] for e in client.events[mark:] if e["type"] == "user_speech_start"}
        assert turns and min(turns) > last_turn, (turns, last_turn)
    finally:
        await client.close()
