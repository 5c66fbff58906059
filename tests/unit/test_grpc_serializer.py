"""The gRPC Converse messages for the shared event sequences (docs/grpc.md,
proto/parley/v1/gateway.proto), through the serializer and through the
stream's sink as the RPC writes them."""

from __future__ import annotations

from typing import Any

import pytest

from parley.config import ParleySettings
from parley.v1 import common_pb2, gateway_pb2
from services.gateway.core import events as ev
from services.gateway.protocols.grpc.converse import ConverseServicer
from services.gateway.protocols.grpc.serializer import to_audio, to_response
from services.gateway.protocols.grpc.sink import Finish, GrpcSink
from tests.support.event_sequences import (
    BARGE_IN,
    ERROR,
    FULL_TURN,
    FULL_TURN_AUDIO,
    INFO,
    ONE_OF_EACH,
    TOOL_CALL,
)

Response = gateway_pb2.ConverseResponse


class FakeContext:
    """What ConverseServicer writes to the client, captured."""

    def __init__(self) -> None:
        self.written: list[Response] = []

    async def write(self, message: Response) -> None:
        self.written.append(message)


class FakeHost:
    settings = ParleySettings()
    sessions: Any = None
    draining = False


async def stream(events: list[ev.SessionEvent], audio: list[ev.AudioOut] = ()) -> list[Response]:
    """The messages a Converse stream writes for these events (audio after the
    first tts_start, as the session sends it), as the RPC's writer takes them
    off the sink."""
    sink = GrpcSink(on_stall=lambda: pytest.fail("the sink stalled"))
    for event in events:
        await sink.send_event(event)
        if isinstance(event, ev.TtsStarted):
            for frame in audio:
                await sink.send_audio(frame)
    await sink.finish(Finish())
    context = FakeContext()
    finish = await ConverseServicer(FakeHost())._write(context, sink)  # type: ignore[arg-type]
    assert finish == Finish()
    return context.written


def kinds(messages: list[Response]) -> list[str | None]:
    return [m.WhichOneof("event") for m in messages]


def test_one_of_each_covers_every_event_type() -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(ev.EVENT_TYPES)


async def test_every_event_type_reaches_the_client() -> None:
    # to_response raises TypeError for a type it has no case for.
    written = await stream(ONE_OF_EACH)
    assert len(written) == len(ONE_OF_EACH)
    assert None not in kinds(written)
    assert len(set(kinds(written))) == len(ev.EVENT_TYPES)


def test_a_type_without_a_case_is_refused() -> None:
    with pytest.raises(TypeError):
        to_response(object())  # type: ignore[arg-type]


def test_every_reason_and_status_has_its_own_value() -> None:
    for reason in ev.EndReason:
        msg = to_response(ev.UserSpeechEnded(1, 0.0, 1.0, reason))
        assert msg is not None
        name = Response.UserSpeechEnd.Reason.Name(msg.user_speech_end.reason)
        assert name == f"REASON_{reason.name}"
    for status in ev.Status:
        msg = to_response(ev.TtsEnded("r", status))
        assert msg is not None
        assert Response.Status.Name(msg.tts_end.status) == f"STATUS_{status.name}"


async def test_full_turn() -> None:
    out = await stream(FULL_TURN, FULL_TURN_AUDIO)
    assert kinds(out) == [
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
        "audio",
        "response_end",
        "turn_metrics",
        "tts_end",
    ]
    started = out[0].session_started
    assert started.session_id == "s1"
    assert started.input_sample_rate == 16000 and started.output_sample_rate == 16000
    assert started.resume_token == "tok" and not started.resumed
    assert started.settings.silence_ms == 500
    assert started.settings.turn_detector == common_pb2.TURN_DETECTOR_SILENCE
    assert list(started.settings.backchannels.words) == ["mm-hmm"]
    assert started.settings.HasField("barge_in")  # every setting in force is set
    assert out[1].user_speech_start == Response.UserSpeechStart(turn_id=1, offset_ms=120.0)
    # The transcript detector's end reaches the client as itself, not UNSPECIFIED.
    assert out[3].user_speech_end == Response.UserSpeechEnd(
        turn_id=1,
        start_ms=120.0,
        end_ms=1800.0,
        reason=Response.UserSpeechEnd.REASON_TRANSCRIPT,
    )
    assert out[4].transcription == Response.Transcription(
        turn_id=1, text="What is the capital of France?", final=True
    )
    assert out[5].response_start == Response.ResponseStart(response_id="r1", turn_id=1)
    assert "".join(m.response_text.delta for m in out[6:8]) == "Paris is the capital."
    assert out[8].response_sentence == Response.ResponseSentence(
        response_id="r1", index=0, text="Paris is the capital."
    )
    assert out[9].tts_start == Response.TtsStart(response_id="r1", sample_rate=16000)
    # Audio carries its response and rate (docs/grpc.md: `audio`).
    assert out[10].audio == Response.Audio(
        pcm=b"\x00\x01" * 320, response_id="r1", sample_rate=16000
    )
    assert out[11].response_end == Response.ResponseEnd(
        response_id="r1", status=Response.STATUS_COMPLETED, text="Paris is the capital."
    )
    metrics = out[12].turn_metrics
    assert (metrics.turn_id, metrics.response_id, metrics.end_of_speech_ms) == (1, "r1", 1800.0)
    assert dict(metrics.hops) == {"final_transcript": 310.0, "first_audio_sent": 900.0}
    assert out[13].tts_end == Response.TtsEnd(response_id="r1", status=Response.STATUS_COMPLETED)


async def test_barge_in() -> None:
    out = await stream(BARGE_IN)
    assert kinds(out) == [
        "response_start",
        "response_sentence",
        "tts_start",
        "user_speech_start",
        "playback_cleared",
        "tts_end",
        "response_end",
        "user_speech_end",
    ]
    assert out[4].playback_cleared == Response.PlaybackCleared(
        response_id="r2", reason="user speech"
    )
    assert out[5].tts_end == Response.TtsEnd(response_id="r2", status=Response.STATUS_CANCELLED)
    assert out[6].response_end == Response.ResponseEnd(
        response_id="r2", status=Response.STATUS_CANCELLED, text="Let me tell"
    )
    assert out[7].user_speech_end.reason == Response.UserSpeechEnd.REASON_SILENCE


async def test_error() -> None:
    out = await stream(ERROR)
    assert kinds(out) == ["user_speech_start", "user_speech_end", "error"]
    assert out[2].error == Response.Error(
        stage="asr",
        code="asr_failed",
        message="transcription failed",
        recoverable=True,
        turn_id=4,
        response_id="",
    )


async def test_tool_call() -> None:
    out = await stream(TOOL_CALL)
    assert kinds(out) == [
        "transcription",
        "response_start",
        "processing",
        "response_sentence",
        "tts_start",
        "response_end",
        "tts_end",
    ]
    assert out[2].processing == Response.Processing(
        stage="tools", detail="get_current_time", turn_id=5
    )


def test_a_resumed_session_says_so() -> None:
    msg = to_response(ev.SessionStarted(INFO, resumed=True))
    assert msg is not None
    assert msg.session_started.resumed and msg.session_started.session_id == "s1"
    updated = to_response(ev.SettingsUpdated(INFO))
    assert updated is not None and not updated.settings_updated.resumed


def test_session_end() -> None:
    msg = to_response(ev.SessionEnded("the agent said goodbye"))
    assert msg == Response(session_end=Response.SessionEnd(reason="the agent said goodbye"))


def test_audio_frame() -> None:
    msg = to_audio(ev.AudioOut("r9", b"\x01\x00" * 4, 24000))
    assert msg.audio == Response.Audio(pcm=b"\x01\x00" * 4, response_id="r9", sample_rate=24000)


async def test_nothing_is_queued_after_the_finish() -> None:
    sink = GrpcSink(on_stall=lambda: pytest.fail("the sink stalled"))
    await sink.send_event(FULL_TURN[0])
    await sink.close("goodbye")
    await sink.send_event(FULL_TURN[1])
    assert isinstance(await sink.get(), Response)
    assert await sink.get() == Finish()
    assert sink._queue.empty()
