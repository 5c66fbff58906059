"""The Xiaozhi board's messages for the shared event sequences (docs/xiaozhi.md,
"Parley -> board"; the firmware's stt / llm / tts / alert messages)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from parley.config import XiaozhiSettings
from services.gateway.core import events as ev
from services.gateway.protocols.opus_codec import OpusDecoder
from services.gateway.protocols.xiaozhi import framing
from services.gateway.protocols.xiaozhi.sink import XiaozhiSink
from tests.support.event_sequences import (
    BARGE_IN,
    ERROR,
    FULL_TURN,
    FULL_TURN_AUDIO,
    ONE_OF_EACH,
    TOOL_CALL,
)
from tests.support.fake_ws import FakeWebSocket

DOC = Path(__file__).resolve().parents[2] / "docs" / "xiaozhi.md"
# The sequences' audio is 16 kHz: the board's downlink at that rate.
CFG = XiaozhiSettings(downlink_sample_rate=16000)


def sink_for(version: int = 1) -> tuple[XiaozhiSink, FakeWebSocket]:
    ws = FakeWebSocket()
    sink = XiaozhiSink(cast(Any, ws), version, CFG)
    sink.session_id = "s1"
    return sink, ws


async def render(
    events: list[ev.SessionEvent], version: int = 1, audio: list[ev.AudioOut] | None = None
) -> tuple[list[dict[str, Any] | bytes], FakeWebSocket]:
    """Every frame the board gets, text frames parsed; audio after tts start."""
    sink, ws = sink_for(version)
    for event in events:
        await sink.send_event(event)
        if isinstance(event, ev.TtsStarted):
            for frame in audio or []:
                await sink.send_audio(frame)
    out = [json.loads(m) if isinstance(m, str) else m for m in ws.sent]
    return out, ws


def without_session_id(messages: list[dict[str, Any] | bytes]) -> list[dict[str, Any] | str]:
    """JSON messages (checked to carry the session id) and "audio" for each Opus frame."""
    out: list[dict[str, Any] | str] = []
    for m in messages:
        if isinstance(m, bytes):
            out.append("audio")
        else:
            assert m.pop("session_id") == "s1", m
            out.append(m)
    return out


async def test_one_of_each_is_handled() -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(ev.EVENT_TYPES)
    sink, _ = sink_for()
    for event in ONE_OF_EACH:
        await sink.send_event(event)  # an unhandled type raises


async def test_an_unknown_event_type_is_refused() -> None:
    sink, _ = sink_for()
    with pytest.raises(AssertionError):
        await sink.send_event(cast(Any, object()))


async def test_full_turn() -> None:
    out, ws = await render(FULL_TURN, audio=FULL_TURN_AUDIO)
    assert without_session_id(out) == [
        {"type": "stt", "text": "What is the capital of France?"},
        {"type": "llm", "text": "🤔", "emotion": "thinking"},
        {"type": "llm", "text": "🙂", "emotion": "neutral"},
        {"type": "tts", "state": "start"},
        {"type": "tts", "state": "sentence_start", "text": "Paris is the capital."},
        "audio",  # the rest of the answer, padded to a whole Opus frame
        {"type": "tts", "state": "stop"},
    ]
    # Version 1: the bare Opus packet, 60 ms of it.
    pcm = OpusDecoder().decode(ws.binary()[0])
    assert len(pcm) == 48000 * 2 * 60 // 1000


async def test_full_turn_audio_in_header_framings() -> None:
    for version in (2, 3):
        _, ws = await render(FULL_TURN, version, FULL_TURN_AUDIO)
        (frame,) = ws.binary()
        parsed = framing.parse(version, frame)
        assert parsed.kind == framing.TYPE_OPUS and parsed.payload
        OpusDecoder().decode(parsed.payload)


async def test_subtitles_follow_tts_start_and_the_tone_sets_the_emotion() -> None:
    out, _ = await render(
        [
            ev.ResponseStarted("r1", 1),
            ev.TtsStarted("r1", 16000),
            ev.ResponseSentence("r1", 0, "Great question!"),
            ev.ResponseSentence("r1", 1, "It is Paris."),
        ]
    )
    assert without_session_id(out)[1:] == [
        {"type": "tts", "state": "start"},
        {"type": "llm", "text": "😊", "emotion": "happy"},
        {"type": "tts", "state": "sentence_start", "text": "Great question!"},
        {"type": "tts", "state": "sentence_start", "text": "It is Paris."},
    ]


STORY = "Let me tell you a long story about it."  # BARGE_IN's sentence


async def test_barge_in() -> None:
    out, _ = await render(BARGE_IN)
    assert without_session_id(out) == [
        {"type": "llm", "text": "🤔", "emotion": "thinking"},
        {"type": "llm", "text": "🙂", "emotion": "neutral"},
        {"type": "tts", "state": "start"},
        {"type": "tts", "state": "sentence_start", "text": STORY},
        {"type": "tts", "state": "stop"},  # at once: no padded last frame
    ]


async def test_an_answer_cut_before_its_audio_shows_no_subtitles() -> None:
    out, _ = await render(
        [
            ev.ResponseStarted("r1", 1),
            ev.ResponseSentence("r1", 0, "Never heard."),
            ev.ResponseEnded("r1", ev.Status.CANCELLED, ""),
            ev.ResponseStarted("r2", 2),
            ev.TtsStarted("r2", 16000),
        ]
    )
    assert {"type": "tts", "state": "sentence_start", "text": "Never heard."} not in (
        without_session_id(out)
    )


async def test_error() -> None:
    out, _ = await render(ERROR)
    assert without_session_id(out) == [
        {
            "type": "alert",
            "status": "Error",
            "message": "asr: transcription failed",
            "emotion": "sad",
        }
    ]


async def test_tool_call() -> None:
    out, _ = await render(TOOL_CALL)
    assert without_session_id(out) == [
        {"type": "stt", "text": "What time is it?"},
        {"type": "llm", "text": "🤔", "emotion": "thinking"},
        {"type": "llm", "text": "🙂", "emotion": "neutral"},
        {"type": "tts", "state": "start"},
        {"type": "tts", "state": "sentence_start", "text": "It is noon."},
        {"type": "tts", "state": "stop"},
    ]


async def test_alerts_of_one_kind_are_spaced_out() -> None:
    sink, ws = sink_for()
    await sink.alert("bad_audio", "first")
    await sink.alert("bad_audio", "again at once")
    await sink.alert("bad_frame", "another kind")
    assert [m["message"] for m in ws.json()] == ["first", "another kind"]


async def test_hello_and_keepalive() -> None:
    sink, ws = sink_for(version=2)
    await sink.send_hello()
    assert ws.json() == [
        {
            "session_id": "s1",
            "type": "hello",
            "transport": "websocket",
            "version": 2,
            "audio_params": {
                "format": "opus",
                "sample_rate": 16000,
                "channels": 1,
                "frame_duration": 60,
            },
        }
    ]
    await sink.keepalive()  # something was just sent: no keepalive yet
    sink.last_sent -= CFG.keepalive_s
    await sink.keepalive()
    assert ws.json()[1:] == [{"session_id": "s1", "type": "llm"}]


async def test_every_rendered_message_is_documented() -> None:
    doc = DOC.read_text()
    out, _ = await render(FULL_TURN + BARGE_IN + ERROR + TOOL_CALL + ONE_OF_EACH)
    for m in out:
        if isinstance(m, bytes):
            continue
        assert f"`{m['type']}`" in doc, m
        if m["type"] == "tts":
            assert f"`state: {m['state']}`" in doc, m
        if m["type"] == "llm" and "emotion" in m:
            assert f"`{m['emotion']}`" in doc, m
        if m["type"] == "alert":
            assert f"`status: {m['status']}`" in doc and f"`emotion: {m['emotion']}`" in doc, m
