"""The load harness's own logic, without a stack: which events are a turn's
in a session that goes on, how devices are planned, and what a step sums up."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from parley.cli.bench import turn_result
from tests.load.probes import growth, metrics_port
from tests.load.run import LoadConfig, plan_devices, summarize_turns


def client(timed: list[tuple[float, dict[str, Any]]], frames: list[float]) -> Any:
    return SimpleNamespace(
        events=[e for _, e in timed],
        arrivals=[t for t, _ in timed],
        frames=[(t, 640) for t in frames],
    )


def test_turn_result_leaves_out_what_is_left_of_an_answer_spoken_over() -> None:
    # Turn 1's answer (r1) is still streaming when turn 2 is spoken over it.
    timed = [
        (10.0, {"type": "user_speech_start", "turn_id": 2, "offset_ms": 9000}),
        (10.1, {"type": "response_text", "response_id": "r1", "delta": "old "}),
        (10.2, {"type": "playback_cleared", "response_id": "r1", "reason": "barge_in"}),
        (10.3, {"type": "response_end", "response_id": "r1", "status": "cancelled"}),
        (11.0, {"type": "user_speech_end", "turn_id": 2, "start_ms": 9000, "end_ms": 10500}),
        (11.4, {"type": "transcription", "turn_id": 2, "text": "Why?", "final": True}),
        (11.5, {"type": "response_start", "response_id": "r2", "turn_id": 2}),
        (11.6, {"type": "response_text", "response_id": "r2", "delta": "Because."}),
        (11.8, {"type": "tts_start", "response_id": "r2", "sample_rate": 16000}),
        (
            11.9,
            {"type": "turn_metrics", "turn_id": 2, "response_id": "r2", "hops": {"x": 1.0}},
        ),
    ]
    # Frames of r1 before the barge-in, then r2's.
    result = turn_result(client(timed, [9.5, 10.15, 11.85]), 0, end_of_speech_at=10.5)
    assert result["turn_id"] == 2 and result["response_id"] == "r2"
    assert result["answer"] == "Because."
    assert result["hops_ms"] == {
        "vad_end": 500.0,
        "final_transcript": 900.0,
        "first_token": 1100.0,
        "first_tts_audio": 1300.0,
        "first_audio": 1350.0,
    }
    assert result["server_hops_ms"] == {"x": 1.0}
    assert result["errors"] == []


def test_plans_take_protocols_and_voices_in_turn_and_spread_barge_ins() -> None:
    cfg = LoadConfig(turns=3, barge_in=0.5, voices=("piper", "espeak:en-us", "espeak:en-gb"))
    plans = plan_devices(4, cfg, random.Random(1))
    assert [p.protocol for p in plans] == ["parley", "xiaozhi", "parley", "xiaozhi"]
    assert [p.voice for p in plans] == ["piper", "espeak:en-us", "espeak:en-gb", "piper"]
    assert all(0 <= p.start_delay_s <= cfg.stagger_s for p in plans)
    barged = [t.barge_after_s is not None for p in plans for t in p.turns]
    # Half of the 8 turns that have a next question; never a device's last.
    assert sum(barged) == 4
    assert all(p.turns[-1].barge_after_s is None for p in plans)
    assert all(len({t.question for t in p.turns}) == 3 for p in plans)
    # One device alone asks more, so the step's p95 is not its one worst turn.
    (alone,) = plan_devices(1, cfg, random.Random(1))
    assert len(alone.turns) == cfg.min_step_turns == 12


def record(device: str, ms: float | None, outcome: str = "ok", **more: Any) -> dict[str, Any]:
    hops = {} if ms is None else {"first_audio": ms}
    protocol = device.split("-")[0]
    return {"device": device, "protocol": protocol, "outcome": outcome, "hops_ms": hops, **more}


def test_a_step_sums_outcomes_and_fairness() -> None:
    records = [
        record("parley-0", 1000.0),
        record("parley-0", 1200.0, "interrupted", barge_in=True, barge_in_ms=200.0),
        record("xiaozhi-1", 3000.0),
        record("xiaozhi-1", None, "failed", errors=["no answer"], turn=2),
        record("parley-2", 1100.0),
    ]
    step = summarize_turns(records)
    assert step["outcomes"] == {"ok": 3, "interrupted": 1, "failed": 1, "refused": 0}
    assert step["first_audio_ms"]["n"] == 4
    assert step["first_audio_ms_by_protocol"]["xiaozhi"]["p50"] == 3000.0
    fairness = step["fairness"]
    assert fairness["session_median_ms"] == {
        "parley-0": 1100.0,
        "parley-2": 1100.0,
        "xiaozhi-1": 3000.0,
    }
    assert fairness["worst_session"] == "xiaozhi-1"
    assert fairness["worst_over_median"] == round(3000 / 1100, 3)
    assert step["barge_ins"]["planned"] == 1 and step["barge_ins"]["cut"] == 1
    assert step["failures"] == [{"device": "xiaozhi-1", "turn": 2, "errors": ["no answer"]}]


def test_metrics_port_and_counter_growth() -> None:
    line = "12:00:00 vad   INFO parley vad ready: instance vad-1a2b metrics=:40123\n"
    assert metrics_port("starting\n" + line) == 40123
    assert metrics_port("vad starting") is None
    before = {"a{x=1}": 2.0, "b{}": 5.0}
    assert growth(before, {"a{x=1}": 5.0, "b{}": 5.0, "c{}": 1.0}) == {"a{x=1}": 3.0, "c{}": 1.0}
