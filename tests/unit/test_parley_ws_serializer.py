"""Parley's WebSocket JSON for the shared event sequences (docs/protocol.md)."""

from __future__ import annotations

from services.gateway.core import events as ev
from services.gateway.protocols.parley_ws.serializer import to_json
from tests.support.event_sequences import BARGE_IN, ERROR, FULL_TURN, ONE_OF_EACH, TOOL_CALL


def test_one_of_each_covers_every_event_type() -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(ev.EVENT_TYPES)


def test_every_event_type_has_a_json_form() -> None:
    for event in ONE_OF_EACH:
        assert isinstance(to_json(event)["type"], str)


def test_full_turn() -> None:
    out = [to_json(e) for e in FULL_TURN]
    assert [m["type"] for m in out] == [
        "session_started",
        "user_speech_start",
        "transcription",
        "user_speech_end",
        "transcription",
        "response_start",
        "response_text",
        "response_text",
        "response_sentence",
        "tts_start",
        "response_end",
        "turn_metrics",
        "tts_end",
    ]
    started = out[0]
    assert started["session_id"] == "s1"
    assert started["resume_token"] == "tok"
    assert started["settings"]["silence_ms"] == 500
    assert started["settings"]["turn_detector"] == "silence"
    assert out[3] == {
        "type": "user_speech_end",
        "turn_id": 1,
        "start_ms": 120.0,
        "end_ms": 1800.0,
        "reason": "transcript",
    }
    assert out[4] == {
        "type": "transcription",
        "turn_id": 1,
        "text": "What is the capital of France?",
        "final": True,
    }
    assert out[10] == {
        "type": "response_end",
        "response_id": "r1",
        "status": "completed",
        "text": "Paris is the capital.",
    }
    assert out[11]["hops"] == {"final_transcript": 310.0, "first_audio_sent": 900.0}


def test_barge_in() -> None:
    out = [to_json(e) for e in BARGE_IN]
    assert out[4] == {"type": "playback_cleared", "response_id": "r2", "reason": "user speech"}
    assert out[5] == {"type": "tts_end", "response_id": "r2", "status": "cancelled"}
    assert out[6]["status"] == "cancelled" and out[6]["text"] == "Let me tell"


def test_error() -> None:
    error = to_json(ERROR[-1])
    assert error == {
        "type": "error",
        "stage": "asr",
        "code": "asr_failed",
        "message": "transcription failed",
        "recoverable": True,
        "turn_id": 4,
        "response_id": "",
    }


def test_tool_call() -> None:
    out = [to_json(e) for e in TOOL_CALL]
    assert out[2] == {
        "type": "processing",
        "stage": "tools",
        "detail": "get_current_time",
        "turn_id": 5,
    }
