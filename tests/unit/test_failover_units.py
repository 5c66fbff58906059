"""Placement's side of failover on a real nats-server, with stand-in owners
that answer PlaceRequests: a stage whose placement is under way is not placed
again by the watcher meanwhile (one owner per stage), a lost owner is told to
the session before its stage is placed again, and the turn id rides along."""

from __future__ import annotations

import asyncio
from collections import Counter

import nats
from nats.aio.msg import Msg

from parley.bus import Bus
from parley.config import NatsSettings
from parley.v1 import common_pb2, placement_pb2
from services.gateway.core.placement import PLACED_STAGES, Placement, PlacementClient
from tests.support.stack import start_nats


async def test_a_slow_first_placement_is_not_doubled_by_the_watcher(tmp_path) -> None:
    async with start_nats(tmp_path) as (_, url):
        owners = await nats.connect(url)
        requests: Counter[str] = Counter()
        turn_ids: list[int] = []

        async def answer_slowly(msg: Msg) -> None:
            stage = msg.subject.split(".")[3]
            requests[stage] += 1
            req = placement_pb2.PlaceRequest()
            req.ParseFromString(msg.data)
            turn_ids.append(req.last_turn_id)
            # Slower than several watcher ticks (0.05 s each below).
            await asyncio.sleep(0.5)
            reply = placement_pb2.PlaceReply(ok=True, instance_id=f"{stage}-{requests[stage]}")
            await msg.respond(reply.SerializeToString())

        for stage in PLACED_STAGES:
            await owners.subscribe(f"parley.v1.place.{stage}", stage, cb=answer_slowly)
        bus = await Bus.connect(NatsSettings(url=url), "gateway")
        client = PlacementClient(bus, timeout_s=2.0, heartbeat_interval_s=0.05, misses=100)
        await client.start()
        try:
            placement = Placement("s1", common_pb2.Settings(), last_turn_id=lambda: 7)
            assert await client.place_session(placement) == []
            await asyncio.sleep(0.3)
            assert requests == dict.fromkeys(PLACED_STAGES, 1)
            assert placement.owners == {s: f"{s}-1" for s in PLACED_STAGES}
            assert set(turn_ids) == {7}
        finally:
            await client.stop()
            await bus.close()
            await owners.close()


async def test_a_lost_owner_is_told_to_the_session_before_it_is_replaced(tmp_path) -> None:
    async with start_nats(tmp_path) as (_, url):
        owners = await nats.connect(url)
        placed: list[str] = []

        async def answer(msg: Msg) -> None:
            stage = msg.subject.split(".")[3]
            placed.append(stage)
            reply = placement_pb2.PlaceReply(ok=True, instance_id=f"{stage}-{len(placed)}")
            await msg.respond(reply.SerializeToString())

        for stage in PLACED_STAGES:
            await owners.subscribe(f"parley.v1.place.{stage}", stage, cb=answer)
        bus = await Bus.connect(NatsSettings(url=url), "gateway")
        # No heartbeat ever comes: every owner is lost after 3 x 0.05 s.
        client = PlacementClient(bus, timeout_s=2.0, heartbeat_interval_s=0.05, misses=3)
        await client.start()
        lost: list[tuple[str, str, int]] = []
        try:
            placement = Placement("s1", common_pb2.Settings())

            async def on_owner_lost(stage: str, owner: str) -> None:
                # Still the old owner: the session can end what it had in flight.
                lost.append((stage, owner, placed.count(stage)))

            placement.on_owner_lost = on_owner_lost
            await client.place_session(placement)
            await asyncio.sleep(0.5)
            llm = [entry for entry in lost if entry[0] == "llm"]
            assert llm and llm[0][1].startswith("llm-") and llm[0][2] == 1
        finally:
            await client.stop()
            await bus.close()
            await owners.close()
