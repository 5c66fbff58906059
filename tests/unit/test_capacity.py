"""Capacity without a stack: which instance placement chooses, how a session
is admitted whole or refused, the load an instance reports, and the token
bucket that holds client audio to real time."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from parley.config import ConfigError, NatsSettings
from parley.load import LoadMeter
from parley.metrics import ERRORS
from parley.v1 import common_pb2, placement_pb2
from services.gateway.core.audio_in import AudioBudget
from services.gateway.core.errors import ServerBusy
from services.gateway.core.placement import (
    PLACED_STAGES,
    InstanceView,
    Placement,
    PlacementClient,
    choose_instance,
    largest_place_request,
)


def view(instance_id: str, **load: Any) -> InstanceView:
    return InstanceView(instance_id, time.monotonic(), **load)


# --- the choice -------------------------------------------------------------


def test_the_least_loaded_instance_with_room_is_chosen() -> None:
    views = [
        view("vad-a", sessions=3, capacity=4),
        view("vad-b", sessions=1, capacity=4),
        view("vad-c", sessions=0, capacity=4, load_ratio=0.9),  # its model work is busy
    ]
    assert choose_instance(views).instance_id == "vad-b"  # type: ignore[union-attr]


def test_full_draining_and_excluded_instances_are_never_chosen() -> None:
    views = [
        view("asr-a", sessions=2, capacity=2),
        view("asr-b", draining=True),
        view("asr-c", sessions=1, capacity=2),
    ]
    assert choose_instance(views).instance_id == "asr-c"  # type: ignore[union-attr]
    assert choose_instance(views, exclude={"asr-c"}) is None
    assert choose_instance([]) is None


def test_capacity_zero_is_unlimited_and_ties_break_on_work_then_sessions_then_id() -> None:
    many = view("llm-a", sessions=500)
    assert many.has_room and many.ratio == 0.0
    views = [view("llm-b", sessions=2), view("llm-a", sessions=2), view("llm-c", sessions=1)]
    assert choose_instance(views).instance_id == "llm-c"  # type: ignore[union-attr]
    views = [view("llm-b", sessions=1), view("llm-a", sessions=1)]
    assert choose_instance(views).instance_id == "llm-a"  # type: ignore[union-attr]
    views = [view("llm-a", queue_depth=3), view("llm-b", sessions=4)]
    assert choose_instance(views).instance_id == "llm-b"  # type: ignore[union-attr]


def test_the_ratio_counts_sessions_placed_since_the_heartbeat() -> None:
    v = view("tts-a", sessions=1, capacity=4, load_ratio=0.25)
    v.reserve("s1")
    v.reserve("s1")  # the same session counts once
    assert v.sessions == 2 and v.ratio == 0.5
    v.release("s1")
    v.release("s1")
    assert v.sessions == 1


def test_a_heartbeat_replaces_the_view() -> None:
    v = view("vad-a")
    beat = placement_pb2.Heartbeat(
        stage="vad",
        instance_id="vad-a",
        session_ids=["x", "y"],
        sessions=2,
        capacity=2,
        queue_depth=1,
        load_ratio=1.0,
    )
    v.heard(beat, time.monotonic())
    assert not v.has_room and v.session_ids == {"x", "y"} and v.queue_depth == 1


# --- admission ----------------------------------------------------------------


class _Bus:
    def __init__(self, max_payload: int = 1_048_576) -> None:
        self.max_payload = max_payload
        self.subscribed: list[str] = []

    async def subscribe(self, subject: str, *_: Any) -> None:
        self.subscribed.append(subject)


def _client_with(instances_per_stage: int, capacity: int) -> PlacementClient:
    client = PlacementClient(_Bus(), 1.0, 1.0, 3)  # type: ignore[arg-type]
    for stage in PLACED_STAGES:
        client.instances[stage] = {
            f"{stage}-{i}": view(f"{stage}-{i}", capacity=capacity)
            for i in range(instances_per_stage)
        }
    return client


def _admitted(client: PlacementClient, session_id: str) -> dict[str, str]:
    placement = Placement(session_id, common_pb2.Settings())
    client.placements[session_id] = placement
    targets = client._admit(placement)
    owners = {}
    for stage, target in targets.items():
        assert target is not None
        client._placed(placement, stage, target.instance_id)
        owners[stage] = target.instance_id
    return owners


def test_sessions_are_admitted_whole_on_different_instances_then_refused() -> None:
    client = _client_with(instances_per_stage=2, capacity=1)
    first, second = _admitted(client, "s1"), _admitted(client, "s2")
    for stage in PLACED_STAGES:
        assert first[stage] != second[stage]
    with pytest.raises(ServerBusy) as refused:
        _admitted(client, "s3")
    assert refused.value.code == "server_busy" and "full" in str(refused.value)
    assert "s3" not in client.placements
    # Nothing of the refused session is left counted anywhere.
    assert all(
        "s3" not in v.session_ids for views in client.instances.values() for v in views.values()
    )
    assert client.full_stage() == "vad"
    client.forget("s1")
    assert client.full_stage() is None
    again = _admitted(client, "s4")
    assert again == first  # the freed instances


def test_a_full_stage_refuses_even_when_the_others_have_room() -> None:
    client = _client_with(instances_per_stage=1, capacity=2)
    client.instances["llm"]["llm-0"].sessions = 2
    with pytest.raises(ServerBusy) as refused:
        _admitted(client, "s1")
    assert refused.value.stage == "llm"
    assert all(v.sessions == 0 for s in ("vad", "asr", "tts") for v in client.instances[s].values())


def test_a_stage_not_heard_from_yet_goes_to_its_queue_group() -> None:
    client = _client_with(instances_per_stage=1, capacity=1)
    del client.instances["tts"]
    placement = Placement("s1", common_pb2.Settings())
    assert client._admit(placement)["tts"] is None


def test_the_largest_place_request_must_fit_the_bus() -> None:
    size = largest_place_request()
    # Text caps in 4-byte characters: about 43 KB, far below NATS' 1 MiB.
    assert 30_000 < size < NatsSettings().max_payload_bytes
    small = PlacementClient(_Bus(max_payload=size - 1), 1.0, 1.0, 3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_payload_bytes"):
        asyncio.run(small.start())


async def test_one_sessions_failed_replacement_does_not_stop_the_others() -> None:
    client = PlacementClient(_Bus(), 1.0, 0.02, 3)  # type: ignore[arg-type]
    checked: list[str] = []

    async def check(placement: Placement) -> None:
        checked.append(placement.session_id)
        if placement.session_id == "bad":
            raise RuntimeError("an undecodable reply")

    client._check = check  # type: ignore[method-assign]
    for sid in ("bad", "good"):
        client.placements[sid] = Placement(sid, common_pb2.Settings())
    failed = ERRORS.labels("gateway", "replacement_failed")._value.get()
    await client.start()
    try:
        await asyncio.sleep(0.15)
    finally:
        await client.stop()
    assert checked.count("good") >= 3 and checked.count("bad") >= 3
    assert ERRORS.labels("gateway", "replacement_failed")._value.get() >= failed + 3


# --- the load an instance reports ------------------------------------------------


def test_the_load_meter_counts_sessions_queue_and_busy_fraction() -> None:
    meter = LoadMeter("asr", capacity=4, workers=1)
    meter.set_sessions(1)
    steps = [meter.step() for _ in range(3)]
    for step in steps:
        step.__enter__()
    assert meter.in_flight == 3 and meter.queue_depth == 2
    time.sleep(0.02)
    for step in steps:
        step.__exit__(None, None, None)
    load = meter.sample()
    assert load.sessions == 1 and load.capacity == 4 and load.queue_depth == 0
    assert load.step_latency_ms >= 15
    # Three steps in flight on one worker all the interval long: busy 3x over.
    assert load.load_ratio > 2.0
    time.sleep(0.02)
    idle = meter.sample()
    assert idle.load_ratio == pytest.approx(0.25)  # only the session share is left
    meter.set_sessions(4)
    assert meter.full


def test_unlimited_capacity_has_room_and_only_work_counts() -> None:
    meter = LoadMeter("vad", capacity=0)
    meter.set_sessions(1000)
    load = meter.sample()
    assert load.has_room and not meter.full and load.load_ratio == 0.0


# --- the token bucket ---------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _stream(budget: AudioBudget, clock: _Clock, speed: float, seconds: float) -> float:
    """Send `seconds` of 20 ms frames at `speed` times real time; the share let through."""
    frame_ms, passed, sent = 20.0, 0.0, 0.0
    while sent < seconds * 1000:
        if budget.take(frame_ms):
            passed += frame_ms
        sent += frame_ms
        clock.now += frame_ms / 1000 / speed
    return passed / sent


def test_real_time_audio_always_passes() -> None:
    clock = _Clock()
    budget = AudioBudget(1.5, 1000, clock)
    assert _stream(budget, clock, speed=1.0, seconds=60) == 1.0
    # 1.4x (a device catching up) passes too.
    assert _stream(budget, clock, speed=1.4, seconds=60) == 1.0


def test_ten_times_real_time_is_held_to_one_and_a_half() -> None:
    clock = _Clock()
    budget = AudioBudget(1.5, 1000, clock)
    share = _stream(budget, clock, speed=10.0, seconds=60)
    # 60 s sent in 6 s: the 1 s burst plus 1.5 x 6 s pass, the rest is dropped.
    assert share == pytest.approx((1.0 + 1.5 * 6.0) / 60, abs=0.01)


def test_a_burst_passes_whole_then_the_bucket_refills() -> None:
    clock = _Clock()
    budget = AudioBudget(1.5, 1000, clock)
    assert budget.take(512) and budget.take(488)  # an EchoKit board's two chunks
    assert not budget.take(20)
    clock.now += 1.0  # a second later: 1500 ms of credit, capped at the burst
    assert budget.take(1000) and not budget.take(20)


def test_speed_zero_turns_the_bucket_off() -> None:
    budget = AudioBudget(0, 1000, _Clock())
    assert all(budget.take(1000) for _ in range(100))
